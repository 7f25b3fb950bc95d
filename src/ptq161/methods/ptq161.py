"""PTQ1.61 (Zhao et al., ACL 2025): structured 4-bit salient channels + learned binarization.

Per linear: the top ``salient_ratio`` input channels by activation statistic are kept
at 4 bits (per-row asymmetric RTN); the other columns are binarized as
r1 r2^T o (s * sign(W - mu) + mu) with s, r1, r2 trained per block against the FP
block's outputs on both input streams (MSE + negative log cosine). With ``init="gptq"`` (beyond
the paper; the cpu recipe's) the signs and 4-bit codes are chosen with GPTQ error feedback
(``ptq161_math.compensated_init``) instead of column by column. The algorithm, and where
paper and reference code differ, is described in the README ("Where this implementation
differs from the reference code").
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..calibration import ChannelStats, record_hessians, run_block
from ..calibration.capture import module_device
from ..config import option
from ..errors import PTQ161Error
from ..nn import PackedPTQ161Linear, PTQ161Parts
from ..primitives.bits import pack_bits, pack_nibbles, unpack_bits, unpack_nibbles
from ..primitives.device import native_bfloat16
from ..primitives.quant import (
    STORAGE_DTYPE,
    assemble,
    binary_dequantize,
    rtn_dequantize,
    rtn_offsets,
)
from . import ptq161_math as pm
from .base import BlockContext, BlockResult, LayerBits, Method, MethodConfig, Parts
from .block_training import (
    TrainSettings,
    check_compile_setting,
    compile_option,
    resolve_compile,
    swapped_in,
    train_block,
)


@dataclass
class PTQ161Config(MethodConfig):
    """Settings of PTQ1.61. Defaults follow the authors' code unless an ablation here showed better.

    statistic: "mean" (the paper's pseudocode: mean |x| per input channel; measured better
    here, benchmarks/results/ptq161_runs.md) or "max" (the reference code's max |x|).
    salient_range: "salient" (min/max over the salient columns only; measured better here,
    benchmarks/results/quality.md) or "row" (the reference code: the whole row). s_init: "uncentred" (code: mean |W|) or
    "centred" (mean |W - mu|, the closed-form optimum). epochs = 0 gives "mask only".
    use_mask = False binarizes every column (XNOR everywhere).
    """

    renamed: ClassVar[dict[str, str]] = {
        "init": "binary_init",
        "loss": "block_loss",
        "schedule": "block_schedule",
        "holdout": "block_holdout",
        "matmul": "train_matmul",
        "compile": "train_compile",
    }

    salient_ratio: float = option(
        0.2,
        "share of input channels kept at 4 bits",
        aliases=("--ratio",),
        minimum=0,
        maximum=1,
        exclusive=True,
    )
    statistic: Literal["max", "mean", "bound"] = option(
        "mean",
        "salient-channel criterion: mean |x| (the paper's pseudocode), max |x| (the reference code's), "
        "bound (mean |x_j| times the binarization error of column j, the paper's derivation)",
    )
    salient_bits: int = 4
    salient_range: Literal["salient", "row"] = option(
        "salient", "columns the 4-bit min/max is taken over: salient (only those) or row (the reference code's)"
    )
    s_init: Literal["uncentred", "centred"] = option(
        "uncentred", "init of the scale s: uncentred (mean |W|, the reference code) or centred (mean |W - mu|)"
    )
    binary_init: Literal["independent", "gptq"] = option(
        "independent",
        "how signs and 4-bit codes are chosen before training: independent (the paper: sign(W - mu), per-row "
        "RTN) or gptq (beyond the paper: binary columns first, then the salient ones, each with GPTQ error "
        "feedback from the block's input Hessian on the quantized stream; same bits)",
    )
    use_mask: bool = True
    use_cosine: bool = True
    epochs: int = option(20, "training epochs per block (0 = the mask and init only)", minimum=0)
    batch_size: int = option(1, "calibration samples per optimizer step", minimum=1)
    lr_s: float = 5e-4
    lr_r: float = 1e-3
    block_loss: Literal["paper", "delta", "normalized"] = option(
        "paper",
        "block loss: paper (MSE to both targets + cosine), delta (the FP-input term on the block's own change, "
        "so error inherited from earlier blocks drops out), normalized (MSE per output channel over the FP "
        "target's mean square)",
    )
    s_param: Literal["linear", "log"] = option(
        "linear",
        "parameterisation of s: linear (the paper's; lr is absolute) or log (s = s0 exp(theta): lr is relative)",
    )
    block_schedule: Literal["constant", "cosine"] = option(
        "constant",
        "learning-rate schedule of the block stage: constant (the paper's) or cosine with 10 % warm-up",
    )
    block_holdout: int = option(
        0,
        "calibration windows held out for early stopping (keep the epoch with the lowest held-out loss)",
        minimum=0,
    )
    train_matmul: Literal["auto", "float32", "bfloat16"] = option(
        "auto",
        "dtype of the training products (block and end-to-end stages): bfloat16 (signs and 4-bit codes are "
        "exact in it; activations rounded), float32, or auto (bfloat16 where the device multiplies it natively: "
        "CPUs with AVX-512 BF16 / AMX, CUDA GPUs that support it; else float32). The dtype used is logged",
    )
    train_compile: Literal["off", "auto", "on"] = compile_option()

    def __post_init__(self) -> None:
        if not 0 < self.salient_ratio < 1:
            raise PTQ161Error(f"salient ratio must be in (0, 1), got {self.salient_ratio}")
        if self.statistic not in ("max", "mean", "bound"):
            raise PTQ161Error(f"statistic must be max, mean or bound, got '{self.statistic}'")
        if self.block_loss not in ("paper", "delta", "normalized"):
            raise PTQ161Error(f"block loss must be paper, delta or normalized, got '{self.block_loss}'")
        if self.s_param not in ("linear", "log") or self.block_schedule not in ("constant", "cosine"):
            raise PTQ161Error("s_param must be linear or log and block_schedule constant or cosine")
        if self.block_holdout < 0:
            raise PTQ161Error(f"block holdout must be >= 0, got {self.block_holdout}")
        check_compile_setting(self.train_compile)
        if self.train_matmul not in ("auto", "float32", "bfloat16"):
            raise PTQ161Error(f"train matmul must be auto, float32 or bfloat16, got '{self.train_matmul}'")
        if self.salient_range not in ("salient", "row"):
            raise PTQ161Error(f"salient range must be salient or row, got '{self.salient_range}'")
        if self.binary_init not in ("independent", "gptq"):
            raise PTQ161Error(f"binary init must be independent or gptq, got '{self.binary_init}'")
        if self.s_init not in ("uncentred", "centred"):
            raise PTQ161Error(f"s init must be uncentred or centred, got '{self.s_init}'")
        if not 2 <= self.salient_bits <= 8:
            raise PTQ161Error(f"salient bits must be in 2..8, got {self.salient_bits}")
        if self.epochs < 0 or self.batch_size < 1:
            raise PTQ161Error("epochs must be >= 0 and batch size >= 1")
        if self.lr_s <= 0 or self.lr_r <= 0:
            raise PTQ161Error("learning rates must be positive")


class LearnableBinaryLinear(nn.Module):
    """A linear whose non-salient columns are r1 r2^T o (s sign + mu); only s, r1, r2 are trainable.

    mask bool [n]; w_salient [m, n_s] (fixed): the salient weights, or with ``salient_scale`` [m]
    their integer codes minus zero points (W_sal = w_salient * salient_scale, exact in bfloat16);
    sign [m, n_b] (+-1); mu, s [m]. ``matmul_dtype``: the dtype of the two products (``factored_linear``).
    """

    def __init__(
        self,
        mask: torch.Tensor,
        w_salient: torch.Tensor,
        sign: torch.Tensor,
        mu: torch.Tensor,
        s: torch.Tensor,
        bias: torch.Tensor | None,
        log_s: bool = False,
        salient_scale: torch.Tensor | None = None,
        matmul_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        m, n_bin = sign.shape
        self.register_buffer("mask", mask)
        # codes minus zero points are small integers, exact in the products' dtype: cast once, not per step
        self.register_buffer("w_salient", w_salient if salient_scale is None else w_salient.to(matmul_dtype))
        self.register_buffer("salient_scale", salient_scale)
        self.register_buffer("sign", sign.to(matmul_dtype))  # +-1: exact in any float dtype
        self.matmul_dtype = matmul_dtype
        self.register_buffer("mu", mu)
        self.bias = bias
        self.log_s = log_s
        if log_s:  # s = s0 exp(theta): an optimizer step changes s by a share, whatever its size
            self.register_buffer("s0", s.clone())
            self.theta = nn.Parameter(torch.zeros_like(s))
        else:
            self.s_lin = nn.Parameter(s.clone())
        self.r1 = nn.Parameter(torch.ones(m, dtype=s.dtype, device=s.device))
        self.r2 = nn.Parameter(torch.ones(n_bin, dtype=s.dtype, device=s.device))
        _register_columns(self, mask)

    @property
    def s(self) -> torch.Tensor:
        """The binarization magnitude s [m]."""
        return self.s0 * torch.exp(self.theta) if self.log_s else self.s_lin

    def s_parameter(self) -> nn.Parameter:
        """The trainable tensor behind s (theta or s itself)."""
        return self.theta if self.log_s else self.s_lin

    def weight(self) -> torch.Tensor:
        """Current fake-quantized weight [m, n]."""
        w_bin = self.r2[None, :] * self.r1[:, None] * (self.s[:, None] * self.sign.float() + self.mu[:, None])
        w_sal = self.w_salient if self.salient_scale is None else self.w_salient * self.salient_scale[:, None]
        return assemble(self.mask, w_sal, w_bin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n] -> [..., m]: ``linear(x, weight())`` computed without forming W (``factored_linear``).

        y = (x_bin r2) sign^T (r1 s) + sum(x_bin r2) (r1 mu) + x_sal W_sal^T. The signs are a
        constant, so the backward pass needs one product (for x and r2) instead of two (x and W)
        and no [m, n] weight is rebuilt per step (speed: benchmarks/results/quantizer_speed.md). Equal
        to the weight() form up to float summation order in float32 (tested).
        """
        cols = (self.salient_cols, self.binary_cols)
        a, b = self.r1 * self.s, self.r1 * self.mu
        y = factored_linear(
            x, cols, self.sign, self.w_salient, self.salient_scale, a, b, self.r2, matmul_dtype=self.matmul_dtype
        )
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def folded_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a = r1 s, b = r1 mu, r2) rounded to the storage dtype."""
        with torch.no_grad():
            a = (self.r1 * self.s).to(STORAGE_DTYPE)
            b = (self.r1 * self.mu).to(STORAGE_DTYPE)
            return a, b, self.r2.detach().to(STORAGE_DTYPE)


def resolve_matmul_dtype(setting: str, device: torch.device) -> torch.dtype:
    """The dtype of the training products for the ``matmul`` setting on ``device`` ("auto": bfloat16 where native)."""
    if setting == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def _folded_weight(mask, sign, codes, zero, scale, a, b, r2) -> torch.Tensor:
    """W [m, n] = assemble(mask, (codes - zero) * scale, r2 * (a * sign + b)); sign int8 +-1 [m, n_b]."""
    return assemble(mask, rtn_dequantize(codes, scale, zero), binary_dequantize(sign, a, b, r2))


def latent_signs(latent: torch.Tensor) -> torch.Tensor:
    """int8 signs [m, n_b] of latent weights: +1 where latent >= 0, else -1."""
    return torch.where(latent >= 0, 1, -1).to(torch.int8)


class _FactoredLinearFn(torch.autograd.Function):
    """y = x W^T for a PTQ1.61 layer, W = assemble(mask, q_sal * scale, r2 * (a * sign + b)), never formed.

    Factored: y = (x_bin r2) sign^T * a + sum(x_bin r2) b + (x_sal q_sal^T) * scale, so a step
    costs one product of the layer's size forward and one backward: the gradients of a, b and
    scale are row sums of gy times the partial products, and r2's and x's share the product
    gy diag(a) sign. Forming W and dL/dW instead costs two [m, n] rebuilds and a third product.
    The two products run in ``cdt``: the signs (+-1) and integer codes are exact in bfloat16, so
    there the only roundings are of x_bin r2 / x_sal / the backward's gy diag(a) to bfloat16 and of
    the products' results (relative 2^-9), everything else stays in x's dtype. Saved for the
    backward: the two column gathers of x and two [tokens, m] partial products, nothing [m, n].

    x [..., n]; sal_cols [n_s] / bin_cols [n_b] int64; sign [m, n_b] (+-1, any dtype); q_sal
    [m, n_s]; scale [m] or None (= 1); a, b [m]; r2 [n_b]; latent [m, n_b] float or None: then the
    signs are sign(latent) and latent gets the straight-through gradient dL/dsign_ij =
    r2_j a_i dL/dW_ij (one more product, only then).
    """

    @staticmethod
    def forward(ctx, x, sal_cols, bin_cols, sign, q_sal, scale, a, b, r2, latent, cdt):
        if latent is not None:
            sign = latent_signs(latent)
        dt, lead = x.dtype, x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        xb, xs = x2.index_select(1, bin_cols), x2.index_select(1, sal_cols)  # [t, n_b], [t, n_s]
        z = xb * r2.to(dt)
        ub = z.to(cdt) @ sign.to(cdt).T  # [t, m]
        sz = z.sum(1, keepdim=True)  # [t, 1]
        us = xs.to(cdt) @ q_sal.to(cdt).T  # [t, m]
        y = us if scale is None else us * scale.to(dt)
        if bin_cols.numel():  # (no binarized columns: a, b may be NaN means of nothing)
            y = torch.addcmul(y + ub * a.to(dt), sz, b.to(dt)[None, :])
        ctx.save_for_backward(xb, ub, us, sz, sal_cols, bin_cols, sign, q_sal, scale, a, b, r2)
        ctx.n, ctx.cdt = x.shape[-1], cdt
        return y.to(dt).reshape(*lead, -1)

    @staticmethod
    def backward(ctx, gy):
        xb, ub, us, sz, sal_cols, bin_cols, sign, q_sal, scale, a, b, r2 = ctx.saved_tensors
        dt, cdt = gy.dtype, ctx.cdt
        g = gy.reshape(-1, gy.shape[-1])  # [t, m]
        need = ctx.needs_input_grad
        binary = bin_cols.numel() > 0
        g_a = (g * ub).sum(0).to(a.dtype) if need[6] and binary else None
        g_b = (g * sz).sum(0).to(b.dtype) if need[7] and binary else None
        g_scale = (g * us).sum(0).to(scale.dtype) if scale is not None and need[5] else None
        g_r2 = gx = g_latent = None
        if need[0] or need[8]:
            gz = g.new_zeros(g.shape[0], 0)
            if binary:
                gz = ((g * a.to(dt)).to(cdt) @ sign.to(cdt)).to(dt) + g @ b.to(dt)[:, None]  # dL/d(x_bin r2) [t, n_b]
            if need[8]:
                g_r2 = (gz * xb).sum(0).to(r2.dtype)
            if need[0]:
                gs = g if scale is None else g * scale.to(dt)
                gx = g.new_empty(g.shape[0], ctx.n)  # every column written: bin_cols and sal_cols partition them
                gx.index_copy_(1, bin_cols, gz * r2.to(dt))
                gx.index_copy_(1, sal_cols, (gs.to(cdt) @ q_sal.to(cdt)).to(dt))
                gx = gx.reshape(*gy.shape[:-1], ctx.n)
        if need[9]:
            g_latent = (g.T @ xb).float() * r2[None, :] * a[:, None]  # dL/dW on the binarized columns, chained
        return gx, None, None, None, None, g_scale, g_a, g_b, g_r2, g_latent, None


def factored_linear(
    x: torch.Tensor,
    cols: tuple[torch.Tensor, torch.Tensor],
    sign: torch.Tensor,
    q_sal: torch.Tensor,
    scale: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    r2: torch.Tensor,
    latent: torch.Tensor | None = None,
    matmul_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x [..., n] -> [..., m] through ``_FactoredLinearFn``; cols = (salient [n_s], binarized [n_b]) column indices."""
    return _FactoredLinearFn.apply(x, cols[0], cols[1], sign, q_sal, scale, a, b, r2, latent, matmul_dtype)


def _register_columns(module: nn.Module, mask: torch.Tensor) -> None:
    """Buffers ``salient_cols`` [n_s] / ``binary_cols`` [n_b]: the column indices where ``mask`` [n] is
    True / False (derived from the mask, not saved)."""
    module.register_buffer("salient_cols", torch.nonzero(mask)[:, 0], persistent=False)
    module.register_buffer("binary_cols", torch.nonzero(~mask)[:, 0], persistent=False)


class FoldedBinaryLinear(nn.Module):
    """A stored PTQ1.61 layer whose continuous factors train end to end; codes, zero points and mask fixed.

    W = assemble(mask, (codes - zero) * scale, r2 * (a * sign + b)) with every factor a stored
    one times a trainable multiplier (initialised to 1): an optimizer step changes a factor by a
    share of itself, whatever the size of the weights. ``parts()`` rounds the factors to fp16
    exactly as the block stage stores them, so the bits do not change. Signs are kept as int8,
    the salient codes minus zero points in ``matmul_dtype``, and W is never formed
    (``factored_linear``): memory is about 1.4 bytes a weight in bfloat16, 1.8 in float32.

    ``train_signs``: the signs become sign(latent) of a float latent weight [m, n_b] that starts
    at +-1 and trains through the straight-through estimator; a sign flips when its latent value
    crosses 0 (still one bit each on disk; 4 bytes a binarized weight while training, plus the
    optimizer's two moments).
    """

    def __init__(
        self,
        parts: Parts,
        bias: torch.Tensor | None,
        train_signs: bool = False,
        matmul_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        p = PTQ161Parts.from_dict(parts)
        mask = p.mask.bool()
        n_s, n = int(mask.sum()), mask.numel()
        self.register_buffer("mask", mask)
        _register_columns(self, mask)
        self.register_buffer("sign", (unpack_bits(p.sign, n - n_s).to(torch.int8) * 2 - 1))
        self.latent = nn.Parameter(self.sign.float()) if train_signs else None
        self.register_buffer("codes", unpack_nibbles(p.codes, n_s))
        self.register_buffer("zero", p.zero.clone())
        self.register_buffer("q_sal", rtn_offsets(self.codes, self.zero).to(matmul_dtype), persistent=False)
        self.matmul_dtype = matmul_dtype
        for k in ("scale", "a", "b", "r2"):
            self.register_buffer(f"{k}0", getattr(p, k).float().clone())
            self.register_parameter(f"g_{k}", nn.Parameter(torch.ones_like(getattr(p, k), dtype=torch.float32)))
        self.bias = None if bias is None else bias.detach().clone()

    def factor(self, k: str) -> torch.Tensor:
        """The current factor ``k`` (scale [m], a [m], b [m] or r2 [n_b])."""
        return getattr(self, f"{k}0") * getattr(self, f"g_{k}")

    def signs(self) -> torch.Tensor:
        """The current signs, int8 +-1 [m, n_b]."""
        return self.sign if self.latent is None else latent_signs(self.latent.detach())

    def flipped(self) -> tuple[int, int]:
        """(signs that differ from the stored ones, number of signs)."""
        return int((self.signs() != self.sign).sum()), self.sign.numel()

    def weight(self) -> torch.Tensor:
        """Current weight [m, n] (float32)."""
        f = [self.factor(k) for k in ("scale", "a", "b", "r2")]
        return _folded_weight(self.mask, self.signs(), self.codes, self.zero, *f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = [self.factor(k) for k in ("scale", "a", "b", "r2")]
        cols = (self.salient_cols, self.binary_cols)
        y = factored_linear(x, cols, self.sign, self.q_sal, *f, latent=self.latent, matmul_dtype=self.matmul_dtype)
        return y if self.bias is None else y + self.bias

    def parts(self) -> Parts:
        """The stored parts with the trained factors rounded to the storage dtype (and the current signs)."""
        with torch.no_grad():
            scale, a, b, r2 = (self.factor(k).to(STORAGE_DTYPE).cpu() for k in ("scale", "a", "b", "r2"))
            out = PTQ161Parts(
                self.mask.cpu(), pack_bits(self.signs().cpu() > 0), pack_nibbles(self.codes.cpu()), scale,
                self.zero.cpu(), a, b, r2,
            )  # fmt: skip
        return out.as_dict()


class PTQ161(Method):
    """PTQ1.61, see the module docstring."""

    name = "ptq161"
    config_class = PTQ161Config
    config: PTQ161Config

    def _init_layer(
        self,
        lin: nn.Linear,
        stats: ChannelStats,
        matmul_dtype: torch.dtype = torch.float32,
        hessian: torch.Tensor | None = None,
    ) -> LearnableBinaryLinear:
        """The trainable layer of ``lin``: mask from ``stats``; with ``hessian`` [n, n] (``init="gptq"``) the
        signs and codes come from ``compensated_init``, else independently (the paper)."""
        cfg = self.config
        w = lin.weight.detach().float()
        n = w.shape[1]
        if cfg.statistic == "bound":
            stat = pm.binarization_bound(w.cpu(), stats.get("mean"))
        else:
            stat = stats.get(cfg.statistic)
        mask = pm.salient_mask(stat, cfg.salient_ratio) if cfg.use_mask else torch.zeros(n, dtype=torch.bool)
        mask = mask.to(w.device)
        if hessian is None:
            init = pm.independent_init(w, mask, cfg.salient_bits, cfg.salient_range, cfg.s_init)
        else:  # the error-feedback loops run on the CPU, where the Hessians are
            init = pm.compensated_init(w.cpu(), hessian, mask.cpu(), cfg.salient_bits, cfg.salient_range, cfg.s_init)
        sign, mu, s, codes, scale, zero = (t.to(w.device) for t in init)
        module = LearnableBinaryLinear(
            mask, rtn_offsets(codes, zero), sign, mu, s, lin.bias, cfg.s_param == "log", scale.float(), matmul_dtype
        )
        module.codes, module.scale, module.zero = codes, scale, zero  # kept for the stored parts
        return module

    def _train(self, ctx: BlockContext, modules: dict[str, LearnableBinaryLinear], t2: torch.Tensor) -> dict:
        cfg = self.config
        params_s = [m.s_parameter() for m in modules.values()]
        params_r = [p for m in modules.values() for p in (m.r1, m.r2)]
        groups = [{"params": params_s, "lr": cfg.lr_s}, {"params": params_r, "lr": cfg.lr_r}]
        norm = pm.channel_norm(ctx.y_fp) if cfg.block_loss == "normalized" else None
        settings = TrainSettings(
            cfg.epochs, cfg.batch_size, cfg.block_schedule, cfg.block_holdout, ("loss", "t1", "t2"), cfg.train_compile
        )

        def targets(sl: slice) -> tuple:
            return ctx.y_fp[sl], t2[sl], ctx.x_fp[sl], ctx.x_q[sl], norm, cfg.block_loss, cfg.use_cosine

        return train_block(ctx, groups, pm.block_loss_terms, targets, settings)

    def quantize_block(self, ctx: BlockContext) -> BlockResult:
        """Initialise every linear, train s, r1, r2 on the block, write the stored weights back."""
        cfg = self.config
        # with init="gptq" the linears' input Hessians on the quantized stream (as GPTQ's), from the same pass
        recording = record_hessians(ctx.linears) if cfg.binary_init == "gptq" else nullcontext({})
        with torch.no_grad(), recording as acc:
            t2 = run_block(ctx.block, ctx.x_q, ctx.call)  # original block on the quantized stream
        hessians = {name: acc[name].get() if name in acc else None for name in ctx.linears}
        dt = resolve_matmul_dtype(cfg.train_matmul, module_device(ctx.block))
        modules = {
            name: self._init_layer(lin, ctx.stats[name], dt, hessians[name]) for name, lin in ctx.linears.items()
        }
        log: dict = {}
        if cfg.epochs > 0:
            with swapped_in(ctx.block, modules, ctx.linears):
                log = self._train(ctx, modules, t2)
            log["matmul_dtype"] = str(dt).removeprefix("torch.")
        parts: dict[str, Parts] = {}
        for name, mod in modules.items():
            a, b, r2 = mod.folded_parts()
            codes = pack_nibbles(mod.codes.cpu()) if self.config.salient_bits == 4 else mod.codes.cpu()
            record = PTQ161Parts(
                mod.mask.cpu(), pack_bits(mod.sign.cpu() > 0), codes, mod.scale.cpu(), mod.zero.cpu(),
                a.cpu(), b.cpu(), r2.cpu(),
            )  # fmt: skip
            parts[name] = record.as_dict()
            lin = ctx.linears[name]
            with torch.no_grad():
                lin.weight.copy_(self.dequantize(parts[name]).to(lin.weight.device, lin.weight.dtype))
        return BlockResult(parts, log)

    def dequantize(self, parts: Parts) -> torch.Tensor:
        """W_hat [m, n] float32 from the stored parts."""
        p = PTQ161Parts.from_dict(parts)
        n_sal = p.n_salient
        codes = p.codes if self.config.salient_bits != 4 else unpack_nibbles(p.codes, n_sal)
        sign = unpack_bits(p.sign, p.mask.numel() - n_sal)
        w_sal = rtn_dequantize(codes, p.scale, p.zero)
        w_bin = binary_dequantize(sign, p.a, p.b, p.r2)
        return assemble(p.mask, w_sal, w_bin)

    def layer_bits(self, parts: Parts) -> LayerBits:
        """Paper count and stored bits of one layer."""
        p = PTQ161Parts.from_dict(parts)
        m, n, n_sal = p.a.numel(), p.mask.numel(), p.n_salient
        bits = self.config.salient_bits
        return LayerBits(m * n, pm.paper_bits_per_weight(m, n, n_sal, bits), pm.stored_bits(m, n, n_sal, bits))

    def code_paths(self, device: torch.device) -> dict[str, str]:
        """The dtype of the training products and whether the block stage runs compiled, on ``device``."""
        dt = resolve_matmul_dtype(self.config.train_matmul, device)
        return {
            "train_matmul": str(dt).removeprefix("torch."),
            "train_compile": str(resolve_compile(self.config.train_compile, device)),
        }

    @property
    def packs(self) -> bool:
        """The packed format holds 4-bit codes: only ``salient_bits == 4`` packs."""
        return self.config.salient_bits == 4

    def packed_module(self, parts: Parts, bias: torch.Tensor | None) -> nn.Module:
        """A ``PackedPTQ161Linear`` holding ``parts`` (and ``bias`` [m])."""
        return PackedPTQ161Linear.from_parts(PTQ161Parts.from_dict(parts), bias)

    @property
    def trains_end_to_end(self) -> bool:
        """The factors of the packed format train end to end (4-bit salient codes only)."""
        return self.packs

    def trainable_module(
        self, parts: Parts, bias: torch.Tensor | None, train_signs: bool = False, device: torch.device | None = None
    ) -> nn.Module | None:
        """``FoldedBinaryLinear`` of the parts (4-bit salient codes only), its products in the ``matmul`` dtype."""
        if not self.packs:
            return None
        dt = resolve_matmul_dtype(self.config.train_matmul, device or torch.device("cpu"))
        return FoldedBinaryLinear(parts, bias, train_signs, dt)


def expected_bits_per_weight(m: int, n: int, ratio: float = 0.2, bits: int = 4) -> float:
    """Stored bits per weight of an [m, n] layer whose salient set has floor(ratio n) + 1 channels."""
    n_sal = math.floor(ratio * n) + 1
    return pm.stored_bits(m, n, n_sal, bits) / (m * n)
