"""Typed run settings: calibration data, presets, and the ``option`` field helper.

Method settings live with each method as dataclasses; a field made with ``option``
carries the help text (and bounds) from which the command line builds its flag, so a
setting is declared once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import PTQ161Error


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> Any:
    """A config field that the command line offers as ``flag`` (default ``--field-name``).

    ``minimum`` / ``maximum`` bound the value at parse time (``exclusive`` makes both bounds
    open); the config's ``__post_init__`` still validates everything, for API callers.
    """
    meta = {"help": help, "flag": flag, "minimum": minimum, "maximum": maximum, "exclusive": exclusive}
    return field(default=default, metadata={"cli": meta})


@dataclass
class CalibConfig:
    """Calibration windows: ``nsamples`` random windows of ``seqlen`` tokens from ``dataset``.

    dataset None = WikiText-2 train when present, else its validation split, else the
    gensim Wikipedia sample. The paper uses 128 x 2048 tokens of WikiText-2 train, seed 2.
    """

    dataset: str | None = None
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 2

    def __post_init__(self) -> None:
        if self.nsamples < 1:
            raise PTQ161Error(f"nsamples must be at least 1, got {self.nsamples}")
        if self.seqlen < 2:
            raise PTQ161Error(f"seqlen must be at least 2, got {self.seqlen}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Preset:
    """A named budget: calibration size and PTQ1.61 epochs, with the reason it exists."""

    nsamples: int
    seqlen: int
    epochs: int
    why: str


PRESETS: dict[str, Preset] = {
    "paper": Preset(128, 2048, 20, "the paper's setting (128 x 2048 tokens, 20 epochs): for GPU users"),
    "cpu": Preset(64, 256, 10, "measured on smollm2-135m: about 18 min on 2 CPU cores, WikiText-2 ppl 14.3x FP"),
    "demo": Preset(16, 256, 2, "what `make demo` runs: a few minutes on 2 CPU cores"),
    "smoke": Preset(4, 64, 1, "seconds, for tests"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` or a clear error."""
    if name not in PRESETS:
        raise PTQ161Error(f"unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
