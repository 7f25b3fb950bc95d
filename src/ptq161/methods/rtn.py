"""RTN baseline: per-row (or per-group) asymmetric min-max rounding; W1 = XNOR binarization."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from ..errors import PTQ161Error
from ..primitives.quant import binarize, rtn_grouped, rtn_stored_bits
from .base import MethodConfig
from .layerwise import LayerwiseMethod


@dataclass
class RTNConfig(MethodConfig):
    """bits 2..8: asymmetric min-max per row (group_size 0) or per group; bits 1: alpha sign(w - mu) + mu."""

    bits: int = option(4, "weight bits 1-8 (1 = XNOR binarization)", minimum=1)
    group_size: int = option(0, "quantization group, any size (0 = per row)", minimum=0)

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise PTQ161Error(f"rtn supports --bits 1..8, got {self.bits}")
        if self.group_size < 0:
            raise PTQ161Error("group size must be >= 0 (0 = per row)")


class RTN(LayerwiseMethod):
    """Round to nearest, no calibration (the Hessian is not needed)."""

    name = "rtn"
    config_class = RTNConfig
    config: RTNConfig
    needs_hessian = False

    def quantize_layer(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, int]]:
        """W [m, n] -> dequantized Q [m, n]."""
        if self.config.bits == 1:
            return binarize(w), {}
        return rtn_grouped(w, self.config.bits, self.config.group_size), {}

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """b bits per weight + per group an fp16 scale and a b-bit zero (W1: fp16 alpha and mu per row)."""
        b = self.config.bits
        if b == 1:
            return 1.0, m * n + 32 * m
        return float(b), rtn_stored_bits(m, n, b, self.config.group_size)
