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


def _build_luts(x, sal, bidx, r2, lut_b, lut_s):
    """Lookup tables of one input vector for one packed linear; returns (sum x', sum xs).

    x [n]; sal [n_s], bidx [n_b] column indices; r2 [n_b]; lut_b [G, 256] with
    lut_b[g, v] = sum of x'[8 g + t] over the set bits t of v (x' = r2 * x[bidx]);
    lut_s [P, 256] with lut_s[p, v] = (v & 15) * xs[2 p] + (v >> 4) * xs[2 p + 1].
    """
    n_b = bidx.shape[0]
    n_s = sal.shape[0]
    total_b = np.float32(0.0)
    lo = np.empty(16, dtype=np.float32)
    hi = np.empty(16, dtype=np.float32)
    for g in range(lut_b.shape[0]):
        lo[0] = 0.0
        hi[0] = 0.0
        for t in range(4):  # subset sums of 4 values by doubling: lo over bits 0-3, hi over bits 4-7
            j = 8 * g + t
            vlo = x[bidx[j]] * r2[j] if j < n_b else np.float32(0.0)
            vhi = x[bidx[j + 4]] * r2[j + 4] if j + 4 < n_b else np.float32(0.0)
            total_b += vlo + vhi
            step = 1 << t
            for v in range(step):
                lo[v + step] = lo[v] + vlo
                hi[v + step] = hi[v] + vhi
        for vh in range(16):
            for vl in range(16):
                lut_b[g, 16 * vh + vl] = hi[vh] + lo[vl]
    total_s = np.float32(0.0)
    for p in range(lut_s.shape[0]):
        x0 = x[sal[2 * p]]
        x1 = x[sal[2 * p + 1]] if 2 * p + 1 < n_s else np.float32(0.0)
        total_s += x0 + x1
        for v in range(256):
            lut_s[p, v] = (v & 15) * x0 + (v >> 4) * x1
    return total_b, total_s


def _row(i, sign, codes, a, b, scale, zero, lut_b, lut_s, total_b, total_s):
    """Output ``i`` of one packed linear from its lookup tables (the formula of the module docstring)."""
    pos = np.float32(0.0)
    for g in range(sign.shape[1]):
        pos += lut_b[g, sign[i, g]]
    q = np.float32(0.0)
    for p in range(codes.shape[1]):
        q += lut_s[p, codes[i, p]]
    return a[i] * (2 * pos - total_b) + b[i] * total_b + scale[i] * (q - zero[i] * total_s)


def _packed_matvec(x, sal_idx, bin_idx, r2, sign, codes, a, b, scale, zero, out):
    """out [T, m] = x [T, n] @ W_hat^T for the packed layer (float32 throughout)."""
    lut_b = np.empty((sign.shape[1], 256), dtype=np.float32)
    lut_s = np.empty((codes.shape[1], 256), dtype=np.float32)
    for t in range(x.shape[0]):
        total_b, total_s = build_luts(x[t], sal_idx, bin_idx, r2, lut_b, lut_s)
        for i in numba.prange(sign.shape[0]):
            out[t, i] = packed_row(i, sign, codes, a, b, scale, zero, lut_b, lut_s, total_b, total_s)


if HAVE_NUMBA:
    build_luts = numba.njit(cache=True, nogil=True, fastmath=True)(_build_luts)
    packed_row = numba.njit(cache=True, nogil=True, fastmath=True, inline="always")(_row)
    packed_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_packed_matvec)
else:  # pragma: no cover
    build_luts = packed_row = packed_matvec = None


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
