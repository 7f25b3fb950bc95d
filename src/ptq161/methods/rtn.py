"""RTN baseline: per-row (or per-group) asymmetric min-max rounding; W1 = XNOR binarization."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PTQ161Error
from . import ptq161_math as pm
from .base import MethodConfig, register_method
from .layerwise import LayerwiseMethod
from .quant_math import binarize


@dataclass
class RTNConfig(MethodConfig):
    """bits 2..8: asymmetric min-max per row (group_size 0) or per group; bits 1: alpha sign(w - mu) + mu."""

    bits: int = 4
    group_size: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise PTQ161Error(f"rtn supports --bits 1..8, got {self.bits}")
        if self.group_size < 0:
            raise PTQ161Error("group size must be >= 0 (0 = per row)")


def rtn_grouped(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Dequantized per-group RTN of w [m, n]; group_size 0 = one group per row."""
    g = group_size or w.shape[1]
    out = torch.empty_like(w)
    for j in range(0, w.shape[1], g):
        blk = w[:, j : j + g]
        scale, zero = pm.rtn_asym_params(blk, bits)
        out[:, j : j + g] = pm.rtn_dequantize(pm.rtn_quantize(blk, scale, zero, bits), scale, zero)
    return out


@register_method
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
        groups = math.ceil(n / (self.config.group_size or n))
        return float(b), m * n * b + m * groups * (16 + b)
