"""Shared quantizer primitives for the baselines: grouped RTN and row-wise binarization.

W is [m, n]; per-row parameters are [m]; grouped parameters are [m, n / group].
"""

from __future__ import annotations

import torch

from .ptq161_math import rtn_asym_params, rtn_dequantize, rtn_quantize


def fake_rtn(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row asymmetric min-max RTN of w [m, k] (range includes 0), dequantized float32 [m, k]."""
    scale, zero = rtn_asym_params(w, bits)
    return rtn_dequantize(rtn_quantize(w, scale, zero, bits), scale, zero)


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
