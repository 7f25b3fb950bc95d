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
    """A named budget: calibration size, PTQ1.61 epochs and settings, end-to-end steps, and why it exists."""

    nsamples: int
    seqlen: int
    epochs: int
    why: str
    method_settings: tuple[tuple[str, Any], ...] = ()  # PTQ1.61 settings that differ from the paper's
    e2e_steps: int = 0  # end-to-end stage (beyond the paper) for methods that have one
    e2e_settings: tuple[tuple[str, Any], ...] = ()  # its settings that differ from E2EConfig's defaults

    def method_defaults(self) -> dict[str, Any]:
        """Config values this preset gives a method (each method takes those its config has)."""
        return {"epochs": self.epochs, **dict(self.method_settings)}

    def describe(self) -> str:
        """One line for --help."""
        extra = "".join(f", {k}={v}" for k, v in self.method_settings)
        e2e = "".join(f", e2e {k}={v}" for k, v in self.e2e_settings)
        e2e = f", end-to-end stage {self.e2e_steps} steps{e2e}" if self.e2e_steps else ""
        return f"{self.nsamples} x {self.seqlen} tokens, {self.epochs} epochs{extra}{e2e} ({self.why})"


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        128,
        2048,
        20,
        "the paper's setting and block stage, no end-to-end stage: for GPU users. Memory: the model, plus "
        "4 activation streams of 128 x 2048 x hidden (fp32: 4 GiB for hidden 1024, 16 GiB for LLaMA-7B's 4096; "
        "kept on the CPU when they exceed half the GPU's free memory), plus one block's training",
    ),
    "cpu": Preset(
        64,
        256,
        10,
        "measured on smollm2-135m (benchmarks/results/quality.md, both stages eager, 18.5 min on 2 CPU cores): "
        "WikiText-2 ppl 84.0 = 4.4x FP, C4 225.7 (block stage alone 143.3 / 371.3); without the GPTQ-compensated "
        "signs and codes (--binary-init independent, the paper's) 117.8 / 261.0 (block stage 271.7 / 457.6); "
        "the paper's method at this budget: --s-param linear --binary-init independent --e2e-steps 0 (273.7)",
        method_settings=(("s_param", "log"), ("lr_s", 1e-2), ("compile", "auto"), ("init", "gptq")),
        e2e_steps=600,
        e2e_settings=(("compile", "auto"), ("windows", 256)),
    ),
    "large": Preset(
        32,
        256,
        8,
        "for 1B+ models on a CPU: a quarter of the cpu preset's block-stage work, log-parameterised s, no "
        "end-to-end stage (it needs the whole model in memory); measured on qwen2.5-coder-1.5b under --max-memory 3GB "
        "(benchmarks/results/large_model.md): 72.7 min on 2 cores (partly contended; 55.8 min with bfloat16 training "
        "products, benchmarks/results/peers_qwen2.5-coder-1.5b.md), peak RSS 2.2 GB, WikiText-2 "
        "ppl 157.0 = 12.8x FP",
        method_settings=(("s_param", "log"), ("lr_s", 1e-2)),
    ),
    "demo": Preset(
        16,
        256,
        2,
        "what `make demo` runs: about a minute of quantization on 2 CPU cores; signs and codes with GPTQ error "
        "feedback (smollm2-135m, first 4 WikiText-2 test windows: 358.0; 884.5 with --binary-init independent)",
        method_settings=(("init", "gptq"),),
    ),
    "smoke": Preset(4, 64, 1, "seconds, for tests"),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` or a clear error."""
    if name not in PRESETS:
        raise PTQ161Error(f"unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return PRESETS[name]
