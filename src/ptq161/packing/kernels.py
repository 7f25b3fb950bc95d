"""CPU kernels for packed PTQ1.61 linears (numba), by table lookup as in T-MAC / bitnet.cpp.

For one input vector x [n] and a layer stored as (salient index, binary index, sign bits,
4-bit codes, per-row a, b, scale, zero; per-binary-column r2):

    y_i = a_i * sum_j s_ij x'_j + b_i * sum_j x'_j + scale_i * (sum_k q_ik xs_k - zero_i * sum_k xs_k)

with x' = r2 * x[binary], xs = x[salient], s_ij = +-1. The sign sum is 2 * (sum over set
bits) - sum x'; both the sign part and the 4-bit part read one byte per 8 signs / 2 codes
and add a precomputed table entry (256 entries per byte position), so the dense weight
is never formed.
"""

from __future__ import annotations

import numpy as np

try:
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a core dependency; kept for clear errors
    HAVE_NUMBA = False


def _bit_lut(xb: np.ndarray, groups: int, lut: np.ndarray) -> None:
    """lut[g, v] = sum of xb[8 g + t] over the set bits t of v (xb zero-padded to 8 groups)."""
    for g in range(groups):
        base = 8 * g
        lut[g, 0] = 0.0
        for t in range(8):
            step = 1 << t
            val = xb[base + t] if base + t < xb.shape[0] else 0.0
            for v in range(step):
                lut[g, v + step] = lut[g, v] + val


def _nibble_lut(xs: np.ndarray, pairs: int, lut: np.ndarray) -> None:
    """lut[p, v] = (v & 15) * xs[2 p] + (v >> 4) * xs[2 p + 1] (xs zero-padded)."""
    for p in range(pairs):
        x0 = xs[2 * p]
        x1 = xs[2 * p + 1] if 2 * p + 1 < xs.shape[0] else 0.0
        for v in range(256):
            lut[p, v] = (v & 15) * x0 + (v >> 4) * x1


def _packed_matvec(x, sal_idx, bin_idx, r2, sign, codes, a, b, scale, zero, out):
    """out [T, m] = x [T, n] @ W_hat^T for the packed layer (float32 throughout)."""
    n_tok = x.shape[0]
    m = sign.shape[0]
    groups = sign.shape[1]
    pairs = codes.shape[1]
    n_b = bin_idx.shape[0]
    n_s = sal_idx.shape[0]
    for t in range(n_tok):
        xb = np.empty(n_b, dtype=np.float32)
        total_b = np.float32(0.0)
        for j in range(n_b):
            xb[j] = x[t, bin_idx[j]] * r2[j]
            total_b += xb[j]
        xs = np.empty(n_s, dtype=np.float32)
        total_s = np.float32(0.0)
        for k in range(n_s):
            xs[k] = x[t, sal_idx[k]]
            total_s += xs[k]
        lut_b = np.empty((groups, 256), dtype=np.float32)
        _bit_lut_jit(xb, groups, lut_b)
        lut_s = np.empty((pairs, 256), dtype=np.float32)
        _nibble_lut_jit(xs, pairs, lut_s)
        for i in numba.prange(m):
            pos = np.float32(0.0)
            for g in range(groups):
                pos += lut_b[g, sign[i, g]]
            q = np.float32(0.0)
            for p in range(pairs):
                q += lut_s[p, codes[i, p]]
            out[t, i] = a[i] * (2 * pos - total_b) + b[i] * total_b + scale[i] * (q - zero[i] * total_s)


if HAVE_NUMBA:
    _bit_lut_jit = numba.njit(cache=True, nogil=True)(_bit_lut)
    _nibble_lut_jit = numba.njit(cache=True, nogil=True)(_nibble_lut)
    packed_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_packed_matvec)
else:  # pragma: no cover
    packed_matvec = None


def _int8_matvec(x, w, scale, out):
    """out [T, m] = (x [T, n] @ w[m, n]^T) * scale [m] with int8 w (per-row symmetric).

    Rows go to the threads in blocks of 64 (one parallel region per call, not per token).
    """
    m, n = w.shape
    for blk in numba.prange((m + 63) // 64):
        for t in range(x.shape[0]):
            xt = x[t]
            for i in range(blk * 64, min(m, blk * 64 + 64)):
                acc = np.float32(0.0)
                for j in range(n):
                    acc += np.float32(w[i, j]) * xt[j]
                out[t, i] = acc * scale[i]


if HAVE_NUMBA:
    int8_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_int8_matvec)
else:  # pragma: no cover
    int8_matvec = None
