"""Base for methods that quantize each linear from its weight (and input Hessian) alone.

The block's linears are quantized from the inputs produced by the already-quantized
previous blocks (``ctx.x_q``), as in GPTQ's sequential driver. These baselines store
their dequantized weight (they are fake-quant); bit counts come from the method's format.
"""

from __future__ import annotations

import torch
from torch import nn

from ..calibration import record_hessians, run_block
from ..primitives.quant import rtn_stored_bits
from .base import BlockContext, BlockResult, LayerBits, Method, Parts


def write_dense(lin: nn.Linear, q: torch.Tensor) -> Parts:
    """Write the dequantized weight Q [m, n] into ``lin`` (its device and dtype); -> the parts ``{"weight": Q}``."""
    with torch.no_grad():
        lin.weight.copy_(q.to(lin.weight.device, lin.weight.dtype))
    return {"weight": q}


def grouped_rtn_bits(bits: int, group_size: int, m: int, n: int) -> tuple[float, int]:
    """(paper count, stored bits) of an [m, n] layer in grouped RTN format: b bits a weight + per group an
    fp16 scale and a b-bit zero point (group_size 0: one group per row)."""
    return float(bits), rtn_stored_bits(m, n, bits, group_size)


class LayerwiseMethod(Method):
    """Subclasses implement ``quantize_layer`` and ``bits``; ``needs_hessian`` selects the forward pass."""

    needs_hessian = True

    def quantize_layer(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, int]]:
        """W [m, n] float32 (and H [n, n]) -> (Q [m, n] float32, integer counts for the bit accounting)."""
        raise NotImplementedError

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """(bits per weight as the method's paper counts them, total stored bits) of one layer."""
        raise NotImplementedError

    def quantize_block(self, ctx: BlockContext) -> BlockResult:
        """Quantize every linear of the block from its weight and its input Hessian on ``x_q``."""
        hessians: dict[str, torch.Tensor | None] = dict.fromkeys(ctx.linears)
        if self.needs_hessian:
            with torch.no_grad(), record_hessians(ctx.linears) as acc:
                run_block(ctx.block, ctx.x_q, ctx.call)
            hessians = {name: a.get() for name, a in acc.items()}
        parts: dict[str, Parts] = {}
        for name, lin in ctx.linears.items():
            q, counts = self.quantize_layer(lin.weight.detach().float().cpu(), hessians[name])
            parts[name] = {**write_dense(lin, q), **{k: torch.tensor(v, dtype=torch.int64) for k, v in counts.items()}}
            ctx.report(layer=name)
        return BlockResult(parts, {})

    def dequantize(self, parts: Parts) -> torch.Tensor:
        """The stored (dequantized) weight."""
        return parts["weight"]

    def layer_bits(self, parts: Parts) -> LayerBits:
        """Bit accounting from the layer shape and the stored counts."""
        m, n = parts["weight"].shape
        counts = {k: int(v) for k, v in parts.items() if k != "weight"}
        paper, stored = self.bits(m, n, counts)
        return LayerBits(m * n, paper, stored)
