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
