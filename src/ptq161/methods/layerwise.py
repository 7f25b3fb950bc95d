"""Base for methods that quantize each linear from its weight (and input Hessian) alone.

The block's linears are quantized from the inputs produced by the already-quantized
previous blocks (``ctx.x_q``), as in GPTQ's sequential driver. These baselines store
their dequantized weight (they are fake-quant); bit counts come from the method's format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import record_hessians, run_block
from ..errors import PTQ161Error
from ..primitives.quant import STORAGE_DTYPE, grouped_dequantize, rtn_stored_bits
from .base import BlockContext, BlockResult, LayerBits, Method, Parts


def write_dense(lin: nn.Linear, q: torch.Tensor) -> Parts:
    """Write the dequantized weight Q [m, n] into ``lin`` (its device and dtype); -> the parts ``{"weight": Q}``."""
    with torch.no_grad():
        lin.weight.copy_(q.to(lin.weight.device, lin.weight.dtype))
    return {"weight": q}


def grouped_parts(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> Parts:
    """A grouped-RTN layer's stored parts: codes uint8 [m, n], scale fp16 [m, G], zero [m, G] (uint8 b-bit, or
    fp16 once the end-to-end stage has trained it) and the group size."""
    return {
        "codes": codes.to(torch.uint8),
        "scale": scale.to(STORAGE_DTYPE),
        "zero": zero if zero.dtype == torch.uint8 else zero.to(STORAGE_DTYPE),
        "group_size": torch.tensor(group_size, dtype=torch.int64),
    }


def grouped_weight(parts: Parts) -> torch.Tensor:
    """The dequantized weight [m, n] float32 of ``grouped_parts``."""
    return grouped_dequantize(parts["codes"], parts["scale"], parts["zero"], int(parts["group_size"]))


class GroupedQuantLinear(nn.Module):
    """A grouped-RTN layer whose scales and zero points train end to end with its codes fixed (EfficientQAT's
    E2E-QP): W = (codes - zero) * scale per group, scale = stored scale x a trainable multiplier (starting
    at 1: a step moves it by a share of itself), zero = stored zero + a trainable offset in code units
    (starting at 0). ``parts()`` stores the scale in fp16 and the trained zero point in fp16 (16 bits a group
    instead of b). The weight is formed in each forward (dense [m, n] float32 while training)."""

    def __init__(self, parts: Parts, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.group_size = int(parts["group_size"])
        self.register_buffer("codes", parts["codes"].clone())
        self.register_buffer("scale0", parts["scale"].float().clone())
        self.register_buffer("zero0", parts["zero"].float().clone())
        self.g_scale = nn.Parameter(torch.ones_like(self.scale0))
        self.d_zero = nn.Parameter(torch.zeros_like(self.zero0))
        self.bias = None if bias is None else bias.detach().clone()

    def weight(self) -> torch.Tensor:
        """The current weight [m, n] float32."""
        return grouped_dequantize(self.codes, self.scale0 * self.g_scale, self.zero0 + self.d_zero, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n] -> [..., m]."""
        return F.linear(x, self.weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def parts(self) -> Parts:
        """The stored parts with the trained scale and zero point (fp16)."""
        with torch.no_grad():
            scale = (self.scale0 * self.g_scale).cpu()
            zero = (self.zero0 + self.d_zero).cpu().to(STORAGE_DTYPE)
        return grouped_parts(self.codes.cpu(), scale, zero, self.group_size)


class GroupedEndToEnd:
    """Mixin of grouped-RTN methods (GPTQ, OmniQuant) whose scales and zero points the end-to-end stage
    trains (``GroupedQuantLinear``); their ``layer_parts`` must give ``grouped_parts``."""

    @property
    def trains_end_to_end(self) -> bool:
        """The scales and zero points train end to end (codes fixed)."""
        return True

    def trainable_module(
        self, parts: Parts, bias: torch.Tensor | None, train_signs: bool = False, device: torch.device | None = None
    ) -> nn.Module | None:
        """``GroupedQuantLinear`` of the parts on ``device``."""
        if train_signs:
            raise PTQ161Error("--e2e-train-signs applies to ptq161's binary signs; this method has codes, not signs")
        return GroupedQuantLinear(parts, bias).to(device or torch.device("cpu"))


def grouped_rtn_bits(bits: int, group_size: int, m: int, n: int) -> tuple[float, int]:
    """(paper count, stored bits) of an [m, n] layer in grouped RTN format: b bits a weight + per group an
    fp16 scale and a b-bit zero point (group_size 0: one group per row)."""
    return float(bits), rtn_stored_bits(m, n, bits, group_size)


class LayerwiseMethod(Method):
    """Subclasses implement ``quantize_layer`` (or ``layer_parts``) and ``bits``; ``needs_hessian`` selects the
    forward pass."""

    needs_hessian = True

    def quantize_layer(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, int]]:
        """W [m, n] float32 (and H [n, n]) -> (Q [m, n] float32, integer counts for the bit accounting)."""
        raise NotImplementedError

    def layer_parts(self, w: torch.Tensor, h: torch.Tensor | None) -> Parts:
        """The stored parts of W [m, n] (and H [n, n]): by default the dequantized ``weight`` and the counts of
        ``quantize_layer``; grouped-RTN methods store ``grouped_parts`` instead."""
        q, counts = self.quantize_layer(w, h)
        return {"weight": q, **{k: torch.tensor(v, dtype=torch.int64) for k, v in counts.items()}}

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
            parts[name] = self.layer_parts(lin.weight.detach().float().cpu(), hessians[name])
            write_dense(lin, self.dequantize(parts[name]))
            ctx.report(layer=name)
        return BlockResult(parts, {})

    def dequantize(self, parts: Parts) -> torch.Tensor:
        """The stored weight, dequantized [m, n]."""
        return grouped_weight(parts) if "codes" in parts else parts["weight"]

    def layer_bits(self, parts: Parts) -> LayerBits:
        """Bit accounting from the layer shape and the stored counts (grouped parts: from their shapes, a
        trained fp16 zero point counted at 16 bits)."""
        if "codes" in parts:
            (m, n), bits = parts["codes"].shape, self.config.bits
            zero_bits = 16 if parts["zero"].is_floating_point() else bits
            paper, _ = self.bits(m, n, {})
            return LayerBits(m * n, paper, rtn_stored_bits(m, n, bits, int(parts["group_size"]), zero_bits))
        m, n = parts["weight"].shape
        counts = {k: int(v) for k, v in parts.items() if k != "weight"}
        paper, stored = self.bits(m, n, counts)
        return LayerBits(m * n, paper, stored)
