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


def rtn_offsets(codes: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """codes [m, k] - zero [m] -> float32 [m, k] (small integers: exact in bfloat16 up to 8 bits)."""
    return codes.float() - zero.float()[:, None]


def rtn_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(codes [m, k] - zero [m]) * scale [m] -> float32 [m, k]."""
    return rtn_offsets(codes, zero) * scale.float()[:, None]


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


def grouped_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """(codes [m, n] - zero [m, G]) * scale [m, G], group g covering columns g * group_size ... (group_size 0:
    G = 1; a short last group allowed) -> float32 [m, n]. ``zero`` may be integer (b-bit) or float (a trained
    zero point).

    The full groups broadcast over a [m, G_full, group_size] view and a short last group is its own [m, r]
    piece, concatenated: no index tensor and no expand-then-slice. The pinned torch's inductor (the end-to-end
    stage's ``--e2e-compile``) miscompiles both of those when the last group is short: an indexed gather's
    backward (``index_put``) reads out of bounds, an expanded [m, G, g] view sliced to n columns gives NaN."""
    m, n = codes.shape
    g = group_size or max(n, 1)
    full = n // g
    c, z, s = codes.float(), zero.float(), scale.float()
    w = ((c[:, : full * g].reshape(m, full, g) - z[:, :full, None]) * s[:, :full, None]).reshape(m, full * g)
    if full * g == n:
        return w
    return torch.cat([w, (c[:, full * g :] - z[:, full:]) * s[:, full:]], dim=1)


def rtn_stored_bits(m: int, n: int, bits: int, group_size: int, zero_bits: int | None = None) -> int:
    """Stored bits of an [m, n] layer in grouped RTN format: b bits a weight + per group an fp16 scale and a zero
    point of ``zero_bits`` (default b; 16 for a trained fp16 zero point)."""
    groups = math.ceil(n / (group_size or n))
    return m * n * bits + m * groups * (16 + (bits if zero_bits is None else zero_bits))


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


def rc_scales(
    target: torch.Tensor, sign: torch.Tensor, mask: torch.Tensor, iters: int, alpha_c: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column scales of ``target ~ alpha_r alpha_c^T * sign`` over ``mask`` (ARB-RC, Li et al. 2025).

    target [m, k], sign [m, k] (+-1), mask bool [m, k] -> (alpha_r [m], alpha_c [k]). Starts from
    ``alpha_c`` when given, else from alpha_r = mean (sign * target) per row and
    alpha_c = mean (sign * target) / alpha_r per column, then
    ``iters`` rounds of the closed-form alternating least-squares updates
    alpha_r_i = sum_j alpha_c_j B_ij T_ij / sum_j alpha_c_j^2 (masked), and the same for alpha_c;
    each update is the exact minimiser given the other, so the squared error never grows.
    Rows / columns with no entries in ``mask`` get 0.
    """
    mk = mask.to(target.dtype)
    bt = sign * target * mk  # B * T, zero outside the mask
    a_r = (bt.sum(dim=1) / mk.sum(dim=1).clamp(min=1)).clamp(min=0)
    if alpha_c is None:
        safe_r = torch.where(a_r > 0, a_r, torch.ones_like(a_r))
        a_c = ((bt / safe_r[:, None]).sum(dim=0) / mk.sum(dim=0).clamp(min=1)).clamp(min=0)
    else:
        a_c = alpha_c
    for _ in range(iters):
        den_r = (mk * a_c[None, :] ** 2).sum(dim=1)
        a_r = torch.where(den_r > 0, (bt * a_c[None, :]).sum(dim=1) / den_r.clamp(min=1e-30), torch.zeros_like(a_r))
        den_c = (mk * a_r[:, None] ** 2).sum(dim=0)
        a_c = torch.where(den_c > 0, (bt * a_r[:, None]).sum(dim=0) / den_c.clamp(min=1e-30), torch.zeros_like(a_c))
    return a_r, a_c


def _sign(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def arb_rc_binarize(w: torch.Tensor, mask: torch.Tensor, iters: int = 15) -> torch.Tensor:
    """ARB-RC binarization of w [m, k] over ``mask``: alpha_r alpha_c^T * sign(w), 0 outside the mask.

    No mean (the RC variant drops it); the scales come from ``rc_scales``.
    """
    sign = _sign(w)
    a_r, a_c = rc_scales(w, sign, mask, iters)
    return a_r[:, None] * a_c[None, :] * sign * mask


def arb_rc_residual2(w: torch.Tensor, mask: torch.Tensor, iters: int = 15) -> torch.Tensor:
    """Second-order ARB-RC of w [m, k] over ``mask``: c1 * B1 + c2 * B2 with c_t = alpha_r,t alpha_c,t^T.

    Initialised as a residual binarization (B2, c2 fitted on w - c1 B1); then ``iters`` rounds
    of: the scales of each term refitted on w minus the other term (one exact row update and
    one exact column update, from the current column scales), and both signs chosen jointly
    as the nearest of the four values +-c1 +-c2 at each entry. Each step minimises the
    squared error given the rest. [m, k].
    """
    mk = mask.to(w.dtype)
    b1 = _sign(w)
    r1, k1 = rc_scales(w, b1, mask, 0)
    c1 = r1[:, None] * k1[None, :]
    b2 = _sign(w - c1 * b1)
    r2, k2 = rc_scales(w - c1 * b1, b2, mask, 0)
    c2 = r2[:, None] * k2[None, :]
    for _ in range(iters):
        r1, k1 = rc_scales(w - c2 * b2, b1, mask, 1, alpha_c=k1)
        c1 = r1[:, None] * k1[None, :]
        r2, k2 = rc_scales(w - c1 * b1, b2, mask, 1, alpha_c=k2)
        c2 = r2[:, None] * k2[None, :]
        cands = torch.stack([-c1 - c2, -c1 + c2, c1 - c2, c1 + c2], dim=-1)  # [m, k, 4]
        pick = (w[..., None] - cands).abs().argmin(dim=-1)
        b1 = torch.where(pick >= 2, 1.0, -1.0).to(w.dtype)
        b2 = torch.where(pick % 2 == 1, 1.0, -1.0).to(w.dtype)
    return (c1 * b1 + c2 * b2) * mk
