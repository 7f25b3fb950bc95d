"""OmniQuant baseline (Shao et al., ICLR 2024), weight-only: learnable weight clipping (LWC) trained per block.

Each linear's weight is quantized in groups (asymmetric, b bits) with a learned clipping
range: per row and group, upper = sigmoid(gamma) max(w, 0) and lower = sigmoid(beta) min(w, 0),
gamma = beta = ``init`` at the start (sigmoid(4) = 0.98: almost min-max). Rounding passes the
gradient straight through. gamma and beta train with AdamW on the MSE between the quantized
block's output on the quantized stream and the FP block's output on the FP stream, through
the block training loop PTQ1.61 uses (``ptq161.methods.block_training``). The learnable
equivalent transformation of the paper is for weight-activation quantization and is not
needed weight-only. The range always contains 0 (as RTN's here), so the zero point fits in b bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import option
from ..errors import PTQ161Error
from ..primitives.quant import STORAGE_DTYPE, grouped_dequantize
from .base import BlockContext, BlockResult, MethodConfig, Parts
from .block_training import (
    TrainSettings,
    check_compile_setting,
    compile_option,
    resolve_compile,
    swapped_in,
    train_block,
)
from .layerwise import GroupedEndToEnd, LayerwiseMethod, grouped_parts, grouped_rtn_bits, write_dense


@dataclass
class OmniQuantConfig(MethodConfig):
    """bits 2..8 in groups of ``group_size`` (0 = per row); LWC trained ``epochs`` per block at ``lr``."""

    renamed: ClassVar[dict[str, str]] = {"compile": "train_compile"}

    bits: int = option(2, "weight bits 2-8", minimum=1)
    group_size: int = option(128, "quantization group (0 = per row)", minimum=0)
    epochs: int = option(20, "training epochs per block (0 = min-max RTN ranges)", minimum=0)
    batch_size: int = option(1, "calibration samples per optimizer step", minimum=1)
    train_compile: Literal["off", "auto", "on"] = compile_option()
    lr: float = 1e-2  # OmniQuant's lwc_lr
    init: float = 4.0

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise PTQ161Error(f"omniquant supports --bits 2..8, got {self.bits}")
        if self.group_size < 0 or self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise PTQ161Error("omniquant needs group_size >= 0, epochs >= 0, batch_size >= 1 and lr > 0")
        check_compile_setting(self.train_compile)


def round_ste(t: torch.Tensor) -> torch.Tensor:
    """round(t) forward, identity gradient backward."""
    return t + (t.round() - t).detach()


def grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """W [m, n] -> [m, G, g] with g = group_size (0: n), zero-padded on the right to G * g columns."""
    m, n = w.shape
    g = group_size or n
    pad = (-n) % g
    return F.pad(w, (0, pad)).reshape(m, (n + pad) // g, g)


def lwc_range(wg: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) [m, G, 1] of groups wg [m, G, g]: sigmoid(beta) min(w, 0), sigmoid(gamma) max(w, 0)."""
    hi = wg.amax(dim=-1, keepdim=True).clamp(min=0)
    lo = wg.amin(dim=-1, keepdim=True).clamp(max=0)
    return torch.sigmoid(beta) * lo, torch.sigmoid(gamma) * hi


def lwc_fake_quant(w: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, bits: int, group_size: int):
    """Differentiable (straight-through) dequantized W [m, n] with the clipping gamma, beta [m, G, 1]."""
    m, n = w.shape
    wg = grouped(w, group_size)
    lo, hi = lwc_range(wg, gamma, beta)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    zero = round_ste(-lo / scale)
    q = torch.clamp(round_ste(wg / scale) + zero, 0, qmax)
    return ((q - zero) * scale).reshape(m, -1)[:, :n]


def lwc_codes(
    w: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stored form of W [m, n] with clipping gamma, beta [m, G, 1]: (codes uint8 [m, n] against the
    fp16-rounded scale, scale fp16 [m, G], b-bit zero point uint8 [m, G])."""
    m, n = w.shape
    wg = grouped(w, group_size)
    lo, hi = lwc_range(wg, gamma, beta)
    qmax = 2**bits - 1
    scale = ((hi - lo) / qmax).to(STORAGE_DTYPE).float()
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    q = torch.clamp(torch.round(wg / scale) + zero, 0, qmax)
    codes = q.reshape(m, -1)[:, :n].to(torch.uint8)
    return codes, scale[..., 0].to(STORAGE_DTYPE), zero[..., 0].to(torch.uint8)


def lwc_stored(w: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """The stored weight: ``lwc_codes`` dequantized, float32 [m, n]."""
    codes, scale, zero = lwc_codes(w, gamma, beta, bits, group_size)
    return grouped_dequantize(codes, scale, zero, group_size)


class LWCLinear(nn.Module):
    """A linear whose weight is quantized with learnable clipping (gamma, beta [m, G, 1]); weight and bias frozen."""

    def __init__(self, lin: nn.Linear, bits: int, group_size: int, init: float) -> None:
        super().__init__()
        w = lin.weight.detach().float()
        self.register_buffer("w", w)
        self.bias = lin.bias
        self.bits, self.group_size = bits, group_size
        groups = math.ceil(w.shape[1] / (group_size or w.shape[1]))
        self.gamma = nn.Parameter(torch.full((w.shape[0], groups, 1), init, device=w.device))
        self.beta = nn.Parameter(torch.full((w.shape[0], groups, 1), init, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n] -> [..., m] through the fake-quantized weight."""
        wq = lwc_fake_quant(self.w, self.gamma, self.beta, self.bits, self.group_size)
        return F.linear(x, wq.to(x.dtype), self.bias)

    def stored_parts(self) -> Parts:
        """``grouped_parts`` of the trained clipping."""
        with torch.no_grad():
            codes, scale, zero = lwc_codes(self.w, self.gamma, self.beta, self.bits, self.group_size)
        return grouped_parts(codes.cpu(), scale.cpu(), zero.cpu(), self.group_size)


def mse_loss(y: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor]:
    """(MSE of block outputs y [b, seq, d] against the FP block's outputs target [b, seq, d],)."""
    return (F.mse_loss(y, target.to(y.device)),)


class OmniQuant(GroupedEndToEnd, LayerwiseMethod):
    """OmniQuant's LWC on the shared block-wise driver and block training loop (dense "fake-quant" output)."""

    name = "omniquant"
    config_class = OmniQuantConfig
    config: OmniQuantConfig

    def code_paths(self, device: torch.device) -> dict[str, str]:
        """Whether the block training runs compiled on ``device``."""
        return {"train_compile": str(resolve_compile(self.config.train_compile, device))}

    def quantize_block(self, ctx: BlockContext) -> BlockResult:
        """Train the clipping of every linear of the block together, then write the stored weights."""
        cfg = self.config
        modules = {name: LWCLinear(lin, cfg.bits, cfg.group_size, cfg.init) for name, lin in ctx.linears.items()}
        log: dict = {}
        if cfg.epochs > 0:
            params = [p for m in modules.values() for p in (m.gamma, m.beta)]

            settings = TrainSettings(cfg.epochs, cfg.batch_size, compile=cfg.train_compile)
            with swapped_in(ctx.block, modules, ctx.linears):
                log = train_block(
                    ctx, [{"params": params, "lr": cfg.lr}], mse_loss, lambda sl: (ctx.y_fp[sl],), settings
                )
        parts: dict[str, Parts] = {}
        for name, mod in modules.items():
            parts[name] = mod.stored_parts()
            write_dense(ctx.linears[name], self.dequantize(parts[name]))
        return BlockResult(parts, log)

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """b bits per weight + per group an fp16 scale and a b-bit zero."""
        return grouped_rtn_bits(self.config.bits, self.config.group_size, m, n)
