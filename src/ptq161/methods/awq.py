"""AWQ baseline (Lin et al. 2024), weight-only: activation-aware per-channel scales, clipping, grouped RTN.

For each group of linears that share an input (q/k/v, gate/up, and o / down when the module
before them can absorb the scale), a per-input-channel scale s = mean|x|^alpha (normalised)
is searched over ``grid`` values of alpha in [0, 1); then, per row and group, the clipping
range max|w| * (1 - i / grid), i < max_shrink * grid, is searched (not for q/k, as AWQ does).
Both searches minimise the output error of each linear on the FP block inputs,
||X W^T - X Q^T||^2 = tr((W - Q) H (W - Q)^T) with H = X^T X, which the Hessian gives exactly.

The stored (fake-quant) weight of a layer is Q(clip(W s)) / s. In a deployment s is folded into
the module before the group (a norm's weight, or the rows of v_proj / up_proj); group RTN of
those rows commutes with a per-row scale, so the folded model computes the same up to fp16
rounding: the bits are RTN's, no extra storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..calibration import record_hessians, run_block
from ..config import option
from ..errors import PTQ161Error
from ..primitives.quant import rtn_grouped
from .base import BlockContext, BlockResult, MethodConfig, Parts
from .layerwise import LayerwiseMethod, grouped_rtn_bits, write_dense


@dataclass
class AWQConfig(MethodConfig):
    """bits 2..8 in groups of ``group_size`` (0 = per row); ``grid`` points for both searches."""

    bits: int = option(4, "weight bits 2-8", minimum=1)
    group_size: int = option(128, "quantization group (0 = per row)", minimum=0)
    grid: int = 20
    max_shrink: float = 0.5
    no_clip: str = "q_proj,k_proj"  # comma-separated name endings: AWQ leaves the query / key ranges alone

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise PTQ161Error(f"awq supports --bits 2..8, got {self.bits}")
        if self.group_size < 0 or self.grid < 1 or not 0 <= self.max_shrink < 1:
            raise PTQ161Error("awq needs group_size >= 0, grid >= 1 and max_shrink in [0, 1)")


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """tr((W - Q) H (W - Q)^T): the summed squared output error of Q [m, n] for inputs with Gram matrix H [n, n]."""
    d = w - q
    return ((d @ h) * d).sum()


def awq_scale(x_mean: torch.Tensor, ratio: float) -> torch.Tensor:
    """s = mean|x|^ratio normalised by sqrt(max(s) min(s)) (x_mean [n] -> s [n], all > 0)."""
    s = x_mean.clamp(min=1e-4) ** ratio
    return s / (s.max() * s.min()).sqrt()


def search_scale(
    weights: list[torch.Tensor], h: torch.Tensor, x_mean: torch.Tensor, bits: int, group_size: int, grid: int
) -> tuple[torch.Tensor, float]:
    """The scale s [n] (and its ratio) minimising the summed output error of Q(W s) / s over ``weights`` [m_i, n]."""
    best: tuple[float, torch.Tensor, float] | None = None
    for i in range(grid):
        ratio = i / grid
        s = awq_scale(x_mean, ratio)
        err = sum(output_error(w, rtn_grouped(w * s, bits, group_size) / s, h).item() for w in weights)
        if best is None or err < best[0]:
            best = (err, s, ratio)
    assert best is not None
    return best[1], best[2]


def _group_view(t: torch.Tensor, g: int) -> torch.Tensor:
    m, n = t.shape
    return t.reshape(m, n // g, g)


def search_clip(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, grid: int, max_shrink: float):
    """W [m, n] clipped per row and group to the range max|w| (1 - i / grid) that minimises the group's output
    error d_g H_gg d_g^T (H [n, n]); i = 0 (no clipping) is a candidate, so the error never grows."""
    m, n = w.shape
    g = group_size if group_size and n % group_size == 0 else n
    wg = _group_view(w, g)
    hb = torch.stack([h[j : j + g, j : j + g] for j in range(0, n, g)])  # [G, g, g]
    top = wg.abs().amax(dim=-1, keepdim=True)
    best_err = torch.full(wg.shape[:2], float("inf"))
    best_max = top.clone()
    for i in range(max(1, int(max_shrink * grid))):
        mx = top * (1 - i / grid)
        cur = torch.maximum(torch.minimum(wg, mx), -mx)
        d = _group_view(rtn_grouped(cur.reshape(m, n), bits, g), g) - wg
        err = torch.einsum("mgi,gij,mgj->mg", d, hb, d)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], mx, best_max)
    return torch.maximum(torch.minimum(wg, best_max), -best_max).reshape(m, n)


def awq_layer(w: torch.Tensor, h: torch.Tensor, s: torch.Tensor, cfg: AWQConfig, clip: bool) -> torch.Tensor:
    """Q(clip(W s)) / s of W [m, n] for scale s [n] (H [n, n] of the unscaled inputs) -> float32 [m, n]."""
    ws = w * s
    if clip:
        hs = h / s[:, None] / s[None, :]  # the Gram matrix of the scaled inputs x / s
        ws = search_clip(ws, hs, cfg.bits, cfg.group_size, cfg.grid, cfg.max_shrink)
    return rtn_grouped(ws, cfg.bits, cfg.group_size) / s


def can_absorb(block: nn.Module, absorber: str | None, n: int) -> bool:
    """Whether module ``absorber`` of ``block`` can take a per-channel scale of an n-wide input."""
    if absorber is None:
        return False
    try:
        mod = block.get_submodule(absorber)
    except AttributeError:
        return False
    if isinstance(mod, nn.Linear):
        return mod.out_features == n  # e.g. v_proj -> o_proj only without grouped-query attention
    return getattr(mod, "weight", None) is not None and mod.weight.shape == (n,)


class AWQ(LayerwiseMethod):
    """AWQ on the shared block-wise driver (dense "fake-quant" output)."""

    name = "awq"
    config_class = AWQConfig
    config: AWQConfig

    def quantize_block(self, ctx: BlockContext) -> BlockResult:
        """Scales per group of linears, then clipping and grouped RTN per linear, from the FP block inputs."""
        cfg = self.config
        with torch.no_grad(), record_hessians(ctx.linears) as acc:
            run_block(ctx.block, ctx.x_fp, ctx.call)
        hessians = {name: a.get().float() for name, a in acc.items()}
        groups = ctx.groups or tuple((name,) for name in ctx.linears)
        parts: dict[str, Parts] = {}
        ratios: dict[str, float] = {}
        for group in groups:
            first = ctx.linears[group[0]]
            h = hessians[group[0]]
            ws = [ctx.linears[name].weight.detach().float().cpu() for name in group]
            if can_absorb(ctx.block, ctx.absorbers.get(group[0]), first.in_features):
                x_mean = ctx.stats[group[0]].get("mean")
                s, ratios[group[0]] = search_scale(ws, h, x_mean, cfg.bits, cfg.group_size, cfg.grid)
            else:
                s = torch.ones(first.in_features)
            for name, w in zip(group, ws, strict=True):
                clip = not any(name.endswith(k) for k in cfg.no_clip.split(",") if k)
                q = awq_layer(w, h, s, cfg, clip)
                parts[name] = write_dense(ctx.linears[name], q)
                ctx.report(layer=name)
        return BlockResult(parts, {"awq_ratio": ratios})

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """b bits per weight + per group an fp16 scale and a b-bit zero (the AWQ scales are folded away)."""
        return grouped_rtn_bits(self.config.bits, self.config.group_size, m, n)
