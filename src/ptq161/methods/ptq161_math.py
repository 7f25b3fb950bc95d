"""PTQ1.61's own math as small pure functions (no modules, no orchestration).

Notation: a linear weight W has shape [m = out_features, n = in_features]; an input
channel j is the column W[:, j]. Salient columns (mask True) are kept at 4 bits per row;
the others are binarized as  W_hat = r1 r2^T o (s * sign(W - mu) + mu). The generic
quantizers (RTN, binary dequantization, column assembly) are in ``ptq161.primitives.quant``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from ..primitives.quant import rtn_asym_params, rtn_dequantize, rtn_quantize
from .gptq_math import gptq_quantize, prepare_hessian


def salient_mask(stat: torch.Tensor, ratio: float) -> torch.Tensor:
    """Top channels by activation statistic, as the reference code selects them.

    stat: float [n] -> bool [n]; threshold = the value at index floor(ratio * n) of the
    descending sort, mask = stat >= threshold (floor(ratio n) + 1 channels plus ties).
    """
    n = stat.numel()
    k = min(math.floor(ratio * n), n - 1)
    threshold = torch.sort(stat, descending=True).values[k]
    return stat >= threshold


def binary_init(
    w: torch.Tensor, s_init: Literal["uncentred", "centred"] = "uncentred"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed sign and row mean of the binarized part, and the initial magnitude s.

    w: [m, k] (non-salient columns) -> (sign float32 [m, k] in {-1, +1}, mu [m], s [m]).
    ``uncentred`` (reference code): s = mean |W| over nonzero entries of the row;
    ``centred``: s = mean |W - mu|, the closed-form least-squares optimum for fixed sign.
    sign(0) is taken as +1 so that one bit stores it.
    """
    mu = w.mean(dim=1)
    centred = w - mu[:, None]
    sign = torch.where(centred >= 0, 1.0, -1.0)
    if s_init == "centred":
        s = centred.abs().mean(dim=1)
    else:
        nz = (w != 0).float()
        s = (w.abs() * nz).sum(dim=1) / nz.sum(dim=1).clamp(min=1)
    return sign, mu, s


def independent_init(
    w: torch.Tensor,
    mask: torch.Tensor,
    bits: int = 4,
    salient_range: Literal["salient", "row"] = "salient",
    s_init: Literal["uncentred", "centred"] = "uncentred",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's init: each column alone, signs from ``binary_init``, per-row RTN of the salient columns.

    w [m, n], salient mask bool [n] -> (sign float32 [m, n_b], mu [m], s [m], codes uint8 [m, n_s],
    scale fp16 [m], zero uint8 [m]); the 4-bit range is over the salient columns (``"salient"``, when
    there are any) or the whole row.
    """
    w_sal = w[:, mask]
    scale, zero = rtn_asym_params(w_sal if salient_range == "salient" and w_sal.shape[1] else w, bits)
    sign, mu, s = binary_init(w[:, ~mask], s_init)
    return sign, mu, s, rtn_quantize(w_sal, scale, zero, bits), scale, zero


def compensated_init(
    w: torch.Tensor,
    h: torch.Tensor,
    mask: torch.Tensor,
    bits: int = 4,
    salient_range: Literal["salient", "row"] = "salient",
    s_init: Literal["uncentred", "centred"] = "uncentred",
    damp: float = 0.01,
    blocksize: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Signs and 4-bit codes chosen with GPTQ error feedback instead of independently (beyond the paper).

    w [m, n], input Hessian h [n, n], salient mask bool [n]. The binary columns come first: each is
    binarized as mu + s * sign(col - mu) (mu, s [m] from ``binary_init`` on the original columns) and its
    error is spread over the columns not yet quantized, the salient ones included, so that these reach
    their least-squares values given the signs. The salient columns then get their per-row 4-bit range
    (over the compensated salient columns, or the original row for ``salient_range="row"``) and are
    rounded with error feedback among themselves (Hessian block H[s, s], damped with the whole layer's
    damping: the first pass's factor reused).
    Returns (sign float32 [m, n_b] in {-1, +1}, mu [m], s [m], codes uint8 [m, n_s], scale fp16 [m],
    zero uint8 [m]); with a diagonal h (no error feedback) this is the independent init: the signs of
    ``binary_init`` and the per-row RTN codes.
    """
    w = w.float()
    bin_idx, sal_idx = torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
    k = bin_idx.numel()
    _, mu, s = binary_init(w[:, bin_idx], s_init)
    perm = torch.cat([bin_idx, sal_idx])
    hp = h.float()[perm][:, perm]
    wp, hinv = prepare_hessian(w[:, perm], hp, damp)
    sign = torch.empty(w.shape[0], k)

    def binarize(col: torch.Tensor, j: int) -> torch.Tensor:
        if j >= k:  # salient: left for the second pass (no error here, only the updates from the signs)
            return col
        sign[:, j] = torch.where(col - mu >= 0, 1.0, -1.0)
        return mu + s * sign[:, j]

    compensated = gptq_quantize(wp, hinv, binarize, blocksize)[:, k:]
    if not sal_idx.numel():
        return sign, mu, s, torch.zeros(w.shape[0], 0, dtype=torch.uint8), *rtn_asym_params(w, bits)
    # the tail of the first pass's factor is the factor of the damped salient block's inverse (a Schur
    # complement identity): the second pass reuses it instead of damping and factoring H[s, s] again
    w_sal, hinv_sal = compensated, hinv[k:, k:].contiguous()
    scale, zero = rtn_asym_params(w_sal if salient_range == "salient" else w, bits)
    codes = torch.empty(w.shape[0], sal_idx.numel(), dtype=torch.uint8)

    def round_4bit(col: torch.Tensor, j: int) -> torch.Tensor:
        codes[:, j] = rtn_quantize(col[:, None], scale, zero, bits)[:, 0]
        return rtn_dequantize(codes[:, j : j + 1], scale, zero)[:, 0]

    gptq_quantize(w_sal, hinv_sal, round_4bit, blocksize)
    return sign, mu, s, codes, scale, zero


def nlc_term(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """-log|mean over tokens of cos(y, t)| per sample (cos over the hidden dim). y, t: [b, seq, d] -> [b]."""
    cos = F.cosine_similarity(y.float(), t.float(), dim=-1)  # [b, seq]
    return -torch.log(cos.mean(dim=-1).abs().clamp(min=1e-8))


def channel_norm(t: torch.Tensor) -> torch.Tensor:
    """Per output channel mean square of the FP target t [..., d] over all tokens -> [d] (floored at 1e-12)."""
    return t.float().pow(2).reshape(-1, t.shape[-1]).mean(dim=0).clamp(min=1e-12)


def block_loss_terms(
    y: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
    x_fp: torch.Tensor | None,
    x_q: torch.Tensor | None,
    norm: torch.Tensor | None,
    kind: str,
    cosine: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total loss, T1 term, T2 term) of block outputs y [b, seq, d] against T1 = F(x_fp) and T2 = F(x_q)
    (``mse_terms`` of ``kind``, plus the negative-log-cosine terms to both targets with ``cosine``)."""
    m1, m2 = mse_terms(y, t1, t2, kind, x_fp, x_q, norm)
    loss = m1 + m2
    if cosine:
        loss = loss + (nlc_term(y, t1) + nlc_term(y, t2)).mean()
    return loss, m1, m2


def mse_terms(
    y: torch.Tensor,
    t1: torch.Tensor,
    t2: torch.Tensor,
    kind: str = "paper",
    x_fp: torch.Tensor | None = None,
    x_q: torch.Tensor | None = None,
    norm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two MSE terms of the block loss: (Y against T1 = F(x_fp), Y against T2 = F(x_q)).

    y, t1, t2, x_fp, x_q: [b, seq, d]; norm: [d] (``channel_norm`` of the FP targets).
    kind "paper": MSE(Y, T1), MSE(Y, T2).
    kind "delta": the T1 term on the block's own change, MSE(Y - x_q, T1 - x_fp): the error that
      earlier blocks left in the input (x_q - x_fp), which no parameter of this block can remove,
      drops out; the T2 term is unchanged (its input is x_q on both sides).
    kind "normalized": both terms divided per output channel by ``norm`` (a few huge residual
      channels no longer dominate the gradient).
    """
    if kind == "delta":
        return F.mse_loss(y - x_q, t1 - x_fp), F.mse_loss(y, t2)
    if kind == "normalized":
        return ((y - t1).pow(2) / norm).mean(), ((y - t2).pow(2) / norm).mean()
    return F.mse_loss(y, t1), F.mse_loss(y, t2)


def block_loss(y: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, use_cosine: bool = True) -> torch.Tensor:
    """MSE(T1, Y) + MSE(T2, Y) - log|mean cos(Y, T1)| - log|mean cos(Y, T2)|, averaged over the batch.

    y, t1, t2: [b, seq, d] -> scalar. (The paper's loss; ``mse_terms`` gives the variants.)
    """
    return block_loss_terms(y, t1, t2, None, None, None, "paper", use_cosine)[0]


def binarization_bound(w: torch.Tensor, mean_abs_x: torch.Tensor) -> torch.Tensor:
    """The paper's salient-channel criterion: mean |x_j| times the binarization error of column j.

    w [m, n], mean_abs_x [n] -> [n]. The error is ||W[:, j] - B[:, j]||_2 with B the initial
    row-wise binarization s sign(W - mu) + mu of the whole row; by the triangle inequality
    ||x W^T - x B^T|| <= sum_j |x_j| ||W[:, j] - B[:, j]||, so the columns with the largest
    terms are the ones whose binarization costs the output most.
    """
    sign, mu, s = binary_init(w, "centred")
    err = (w - (s[:, None] * sign + mu[:, None])).norm(dim=0)
    return mean_abs_x.float() * err


def cosine_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor at ``step`` of ``total``: linear warm-up over ``warmup`` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def paper_bits_per_weight(m: int, n: int, n_salient: int, salient_bits: int = 4) -> float:
    """The paper's count (Appendix A): weight bits + 1 mask bit per column + 32 bits per row."""
    return ((n - n_salient) + salient_bits * n_salient) / n + 1 / m + 32 / n


def stored_bits(m: int, n: int, n_salient: int, salient_bits: int = 4) -> int:
    """Bits the PTQ1.61 format stores for one [m, n] layer.

    mask (1 per column) + signs (1 per binarized weight) + codes (salient_bits per salient
    weight) + per row: 4-bit scale fp16, zero (salient_bits), a and b fp16 + per binarized
    column: r2 fp16.
    """
    n_bin = n - n_salient
    per_row = (16 + salient_bits + 32) if n_salient else 32
    return n + m * n_bin + salient_bits * m * n_salient + per_row * m + 16 * n_bin
