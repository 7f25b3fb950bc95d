"""Quantizer primitives shared by every method and by the packed modules.

Notation: a weight W has shape [m = out_features, n = in_features]; per-row parameters
are [m]; grouped parameters are [m, n / group]. Scales are rounded to fp16 (the storage
dtype) before codes are computed, so the dequantized weight is exactly what is stored.
"""

from __future__ import annotations

import math

import torch

STORAGE_DTYPE = torch.float16  # per-row / per-column factors are stored in fp16


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


def rtn_fake(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row RTN of w [m, k] and back: dequantized float32 [m, k]."""
    scale, zero = rtn_asym_params(w, bits)
    return rtn_dequantize(rtn_quantize(w, scale, zero, bits), scale, zero)


def rtn_grouped(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Dequantized per-group RTN of w [m, n] -> float32 [m, n]; group_size 0 = one group per row."""
    g = group_size or w.shape[1]
    out = torch.empty_like(w)
    for j in range(0, w.shape[1], g):
        out[:, j : j + g] = rtn_fake(w[:, j : j + g], bits)
    return out


def rtn_stored_bits(m: int, n: int, bits: int, group_size: int) -> int:
    """Stored bits of an [m, n] layer in grouped RTN format: b bits a weight + per group an fp16 scale, a b-bit zero."""
    groups = math.ceil(n / (group_size or n))
    return m * n * bits + m * groups * (16 + bits)


def binarize_rows(w: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (mu, alpha) of the XNOR binarization b = alpha sign(w - mu) + mu over entries in ``mask``.

    w [m, k], mask bool [m, k] or None (all) -> (mu [m], alpha [m]); alpha = mean |w - mu|,
    the least-squares optimum for the fixed sign. Rows with no entries get (0, 0).
    """
    mk = torch.ones_like(w, dtype=torch.bool) if mask is None else mask
    cnt = mk.sum(dim=1).clamp(min=1)
    mu = (w * mk).sum(dim=1) / cnt
    alpha = ((w - mu[:, None]).abs() * mk).sum(dim=1) / cnt
    return mu, alpha


def apply_binary(w: torch.Tensor, mu: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """alpha sign(w - mu) + mu with sign(0) = +1: w [m, k], mu/alpha [m] -> [m, k]."""
    sign = torch.where(w - mu[:, None] >= 0, 1.0, -1.0)
    return alpha[:, None] * sign + mu[:, None]


def binarize(w: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """XNOR binarization of w [m, k] over ``mask`` (entries outside the mask are returned as 0)."""
    mu, alpha = binarize_rows(w, mask)
    out = apply_binary(w, mu, alpha)
    return out if mask is None else out * mask


def residual_binarize(w: torch.Tensor, mask: torch.Tensor | None, order: int) -> torch.Tensor:
    """Order-k residual binarization (BiLLM): b1 = bin(w), b2 = bin(w - b1), ... summed. [m, k] -> [m, k]."""
    approx = torch.zeros_like(w)
    for _ in range(order):
        approx = approx + binarize(w - approx, mask)
    return approx


def binary_dequantize(sign: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """r2[j] * (a[i] * sign[i, j] + b[i]): the binarized columns of a PTQ1.61 weight.

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
