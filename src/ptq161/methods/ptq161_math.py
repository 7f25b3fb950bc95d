"""PTQ1.61 math as small pure functions (no modules, no orchestration).

Notation: a linear weight W has shape [m = out_features, n = in_features]; an input
channel j is the column W[:, j]. Salient columns (mask True) are kept at 4 bits per row;
the others are binarized as  W_hat = r1 r2^T o (s * sign(W - mu) + mu).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

STORAGE_DTYPE = torch.float16  # per-row / per-column factors are stored in fp16


def salient_mask(stat: torch.Tensor, ratio: float) -> torch.Tensor:
    """Top channels by activation statistic, as the reference code selects them.

    stat: float [n] -> bool [n]; threshold = the value at index floor(ratio * n) of the
    descending sort, mask = stat >= threshold (floor(ratio n) + 1 channels plus ties).
    """
    n = stat.numel()
    k = min(math.floor(ratio * n), n - 1)
    threshold = torch.sort(stat, descending=True).values[k]
    return stat >= threshold


def rtn_asym_params(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row asymmetric min-max parameters with the range forced to include 0.

    w: [m, k] -> (scale fp16 [m], zero uint8 [m]). The scale is rounded to fp16 first,
    so codes are computed against exactly the stored scale.
    """
    qmax = 2**bits - 1
    lo = torch.clamp(w.min(dim=1).values, max=0)
    hi = torch.clamp(w.max(dim=1).values, min=0)
    scale = ((hi - lo) / qmax).to(STORAGE_DTYPE)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.clamp(torch.round(-lo / scale.float()), 0, qmax).to(torch.uint8)
    return scale, zero


def rtn_quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes of w [m, k] for per-row (scale [m], zero [m]): uint8 [m, k] in [0, 2^bits - 1]."""
    q = torch.round(w / scale.float()[:, None]) + zero.float()[:, None]
    return torch.clamp(q, 0, 2**bits - 1).to(torch.uint8)


def rtn_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(codes [m, k] - zero [m]) * scale [m] -> float32 [m, k]."""
    return (codes.float() - zero.float()[:, None]) * scale.float()[:, None]


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


def binary_dequantize(sign: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """r2[j] * (a[i] * sign[i, j] + b[i]) with a = r1 s, b = r1 mu folded per row.

    sign [m, k] (float +-1 or bool with True = +1), a [m], b [m], r2 [k] -> float32 [m, k].
    """
    sgn = sign.float() * 2 - 1 if sign.dtype == torch.bool else sign.float()
    return r2.float()[None, :] * (a.float()[:, None] * sgn + b.float()[:, None])


def assemble(mask: torch.Tensor, w_salient: torch.Tensor, w_binary: torch.Tensor) -> torch.Tensor:
    """Full weight from salient columns [m, n_s] and binarized columns [m, n_b]; mask bool [n] -> [m, n]."""
    m, n = w_salient.shape[0], mask.numel()
    out = w_salient.new_empty(m, n) if w_salient.numel() else w_binary.new_empty(m, n)
    out[:, mask] = w_salient
    out[:, ~mask] = w_binary
    return out


def nlc_term(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """-log|mean over tokens of cos(y, t)| per sample (cos over the hidden dim). y, t: [b, seq, d] -> [b]."""
    cos = F.cosine_similarity(y.float(), t.float(), dim=-1)  # [b, seq]
    return -torch.log(cos.mean(dim=-1).abs().clamp(min=1e-8))


def block_loss(y: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor, use_cosine: bool = True) -> torch.Tensor:
    """MSE(T1, Y) + MSE(T2, Y) - log|mean cos(Y, T1)| - log|mean cos(Y, T2)|, averaged over the batch.

    y, t1, t2: [b, seq, d] -> scalar.
    """
    loss = F.mse_loss(y, t1) + F.mse_loss(y, t2)
    if use_cosine:
        loss = loss + (nlc_term(y, t1) + nlc_term(y, t2)).mean()
    return loss


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
