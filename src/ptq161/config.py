"""Typed run settings: calibration data and the ``option`` field helper.

Method settings live with each method as dataclasses; a field made with ``option``
carries the help text (and bounds) from which the command line builds its flag, so a
setting is declared once. The flag is the setting's name (``--salient-ratio`` sets
``salient_ratio``), prefixed with its section outside the method's own settings
(``--calib-nsamples``, ``--e2e-steps``); ``aliases`` are older spellings, still accepted
and not shown. Recipes (``ptq161.pipeline.recipe``) combine these configs.
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
    aliases: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive: bool = False,
) -> Any:
    """A config field that the command line offers as a flag named after it (``aliases``: older flags).

    ``minimum`` / ``maximum`` bound the value at parse time (``exclusive`` makes both bounds
    open); the config's ``__post_init__`` still validates everything, for API callers.
    """
    meta = {"help": help, "aliases": aliases, "minimum": minimum, "maximum": maximum, "exclusive": exclusive}
    return field(default=default, metadata={"cli": meta})


@dataclass
class CalibConfig:
    """Calibration windows: ``nsamples`` random windows of ``seqlen`` tokens from ``dataset``.

    dataset None = the general-purpose mix of the data directory's corpora (``wikitext2+c4``: WikiText-2
    train, else valid, and the C4 train sample, window by window; see ``ptq161.data.default_calib_corpus``).
    The paper uses 128 x 2048 tokens of WikiText-2 train, seed 2 (``dataset="wikitext2"``).
    """

    dataset: str | None = option(
        None,
        "calibration corpus: wikitext2 (the papers' protocol), c4, wiki-sample, text:PATH, or a mix taking "
        "windows from each in turn (e.g. c4+text:a.txt+text:b.txt); default: wikitext2+c4, the corpora "
        "the data directory holds (else the Wikipedia sample)",
        aliases=("--calib",),
    )
    nsamples: int = option(128, "calibration windows", minimum=1, aliases=("--nsamples",))
    seqlen: int = option(2048, "tokens per calibration window", minimum=2)
    seed: int = option(2, "seed of the window sampling and of everything random in the run", aliases=("--seed",))

    def __post_init__(self) -> None:
        if self.nsamples < 1:
            raise PTQ161Error(f"nsamples must be at least 1, got {self.nsamples}")
        if self.seqlen < 2:
            raise PTQ161Error(f"seqlen must be at least 2, got {self.seqlen}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)
