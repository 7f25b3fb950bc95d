"""GPTQ baseline (Frantar et al. 2023): RTN grid + Hessian-based error feedback."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from ..errors import PTQ161Error
from ..primitives.quant import rtn_asym_params, rtn_dequantize, rtn_quantize
from .base import MethodConfig, Parts
from .gptq_math import gptq_quantize, prepare_hessian
from .layerwise import GroupedEndToEnd, LayerwiseMethod, grouped_parts, grouped_rtn_bits


@dataclass
class GPTQConfig(MethodConfig):
    """bits 2..8, group_size 0 (per row, parameters once on the whole W) or 128; damp 0.01; blocks of 128."""

    bits: int = option(2, "weight bits 2-8", minimum=1)
    group_size: int = option(0, "quantization group (0 = per row)", minimum=0)
    damp: float = 0.01
    blocksize: int = 128

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise PTQ161Error(f"gptq supports --bits 2..8, got {self.bits}")
        if self.group_size not in (0, self.blocksize):
            raise PTQ161Error(f"gptq supports group size 0 (per row) or {self.blocksize}, got {self.group_size}")
        if not 0 < self.damp < 1:
            raise PTQ161Error("damp must be in (0, 1)")


def gptq_layer_codes(
    w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, damp: float, blocksize: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ-quantize W [m, n] with Hessian H [n, n] -> (dequantized Q [m, n], codes uint8 [m, n], scale fp16
    [m, G], zero uint8 [m, G]) with G = ceil(n / group_size) groups (group_size 0: one per row)."""
    w, hinv = prepare_hessian(w, h, damp)
    m, n = w.shape
    groups = -(-n // group_size) if group_size else 1
    scales, zeros = torch.empty(m, groups, dtype=torch.float16), torch.empty(m, groups, dtype=torch.uint8)
    codes = torch.empty(m, n, dtype=torch.uint8)
    params = {"p": rtn_asym_params(w, bits)}
    scales[:, 0], zeros[:, 0] = params["p"]

    def quantize_column(col: torch.Tensor, idx: int) -> torch.Tensor:
        scale, zero = params["p"]
        codes[:, idx] = rtn_quantize(col[:, None], scale, zero, bits)[:, 0]
        return rtn_dequantize(codes[:, idx : idx + 1], scale, zero)[:, 0]

    def on_block(w_block: torch.Tensor, start: int) -> None:
        if group_size:
            params["p"] = rtn_asym_params(w_block, bits)  # groups = blocks, fitted on the updated weights
            scales[:, start // group_size], zeros[:, start // group_size] = params["p"]

    q = gptq_quantize(w, hinv, quantize_column, blocksize, on_block=on_block)
    return q, codes, scales, zeros


def gptq_layer(
    w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, damp: float, blocksize: int
) -> torch.Tensor:
    """GPTQ-quantize W [m, n] with Hessian H [n, n]; returns dequantized Q [m, n]."""
    return gptq_layer_codes(w, h, bits, group_size, damp, blocksize)[0]


class GPTQ(GroupedEndToEnd, LayerwiseMethod):
    """GPTQ on the shared block-wise driver."""

    name = "gptq"
    config_class = GPTQConfig
    config: GPTQConfig

    def layer_parts(self, w: torch.Tensor, h: torch.Tensor | None) -> Parts:
        """W [m, n], H [n, n] -> ``grouped_parts`` (codes, per-group fp16 scale and b-bit zero)."""
        c = self.config
        _, codes, scale, zero = gptq_layer_codes(w, h, c.bits, c.group_size, c.damp, c.blocksize)
        return grouped_parts(codes, scale, zero, c.group_size)

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """b bits per weight + per group an fp16 scale and a b-bit zero."""
        return grouped_rtn_bits(self.config.bits, self.config.group_size, m, n)
