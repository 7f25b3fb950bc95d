"""CPU kernels for packed PTQ1.61 linears (numba): table lookup for the signs as in T-MAC / bitnet.cpp.

For one input vector x [n] and a layer stored as (salient index, binary index, sign bits,
4-bit codes, per-row a, b, scale, zero; per-binary-column r2):

    y_i = a_i * sum_j s_ij x'_j + b_i * sum_j x'_j + scale_i * (sum_k q_ik xs_k - zero_i * sum_k xs_k)

with x' = r2 * x[binary], xs = x[salient], s_ij = +-1. The sign sum is 2 * (sum over set
bits) - sum x': one byte of sign bits (8 columns) adds one entry of a 256-entry table of
subset sums of x'. The 4-bit part is a vectorized multiply-add over the code bytes (each
byte holds the codes of two salient columns; the nibbles are split in float arithmetic so
the loop stays in float SIMD). The dense weight is never formed.

Threads: the output rows are split into one contiguous chunk per thread, and each chunk
builds its own tables (a few microseconds) instead of sharing one: reading tables another
core has just written costs more than building them (measured in
benchmarks/results/packed_inference.md). One parallel region per call.
"""

from __future__ import annotations

import numba
import numpy as np

CODE_PAD = 32  # code rows padded to a multiple of this many bytes: the 4-bit loop vectorizes without a tail
ROW_ALIGN = 16  # chunk boundaries on multiples of 16 rows (one cache line of float32 outputs)


def kernel_threads() -> int:
    """How many row chunks the kernels split a layer into: numba's current thread count."""
    return numba.get_num_threads()


def padded_codes(codes: np.ndarray) -> np.ndarray:
    """The 4-bit code bytes [m, P] copied into [m, P rounded up to CODE_PAD] with zero bytes after them."""
    m, p = codes.shape
    out = np.zeros((m, -(-p // CODE_PAD) * CODE_PAD), dtype=np.uint8)
    out[:, :p] = codes
    return out


def _prepare(x, sal, bidx, r2, n_code_bytes, lut_b, xp, xe, xo):
    """Tables of one input vector x [n] for one packed linear; returns (sum x', sum xs).

    lut_b [>= G, 256]: lut_b[g, v] = sum of x'[8 g + t] over the set bits t of v, x' = r2 * x[bidx]
    (built by doubling: the entries 2^t .. 2^(t+1) - 1 are the first 2^t plus x'[8 g + t]).
    xe, xo [>= padded P]: the even / odd salient inputs x[sal[2 p]], x[sal[2 p + 1]], zero past the end.
    xp [>= 8 G] is scratch.
    """
    n_b = bidx.shape[0]
    n_s = sal.shape[0]
    groups = (n_b + 7) // 8
    total_b = np.float32(0.0)
    for j in range(n_b):
        v = x[bidx[j]] * r2[j]
        xp[j] = v
        total_b += v
    for j in range(n_b, 8 * groups):
        xp[j] = 0.0
    for g in range(groups):
        lut_b[g, 0] = 0.0
        for t in range(8):
            step = 1 << t
            v = xp[8 * g + t]
            for u in range(step):
                lut_b[g, step + u] = lut_b[g, u] + v
    total_s = np.float32(0.0)
    for p in range(n_code_bytes):
        e = x[sal[2 * p]] if 2 * p < n_s else np.float32(0.0)
        o = x[sal[2 * p + 1]] if 2 * p + 1 < n_s else np.float32(0.0)
        xe[p] = e
        xo[p] = o
        total_s += e + o
    return total_b, total_s


def _code_dot(row, xe, xo):
    """sum_p low(row[p]) * xe[p] + high(row[p]) * xo[p] for one padded code row [P'] (nibbles split in float)."""
    q = np.float32(0.0)
    for p in range(row.shape[0]):
        c = np.float32(row[p])
        hi = np.floor(c * np.float32(0.0625))
        q += (c - np.float32(16.0) * hi) * xe[p] + hi * xo[p]
    return q


def _rows(lo, hi, sign, codes, a, b, scale, zero, lut_b, xe, xo, total_b, total_s, out):
    """out[i] for rows lo <= i < hi from the tables. Two passes: the sign lookups (4 rows at a
    time, sums parked in out), then the 4-bit dot products and the per-row factors."""
    groups = sign.shape[1]
    hi4 = lo + (hi - lo) // 4 * 4
    for i in range(lo, hi4, 4):
        p0 = np.float32(0.0)
        p1 = np.float32(0.0)
        p2 = np.float32(0.0)
        p3 = np.float32(0.0)
        for g in range(groups):
            p0 += lut_b[g, sign[i, g]]
            p1 += lut_b[g, sign[i + 1, g]]
            p2 += lut_b[g, sign[i + 2, g]]
            p3 += lut_b[g, sign[i + 3, g]]
        out[i] = p0
        out[i + 1] = p1
        out[i + 2] = p2
        out[i + 3] = p3
    for i in range(hi4, hi):
        pos = np.float32(0.0)
        for g in range(groups):
            pos += lut_b[g, sign[i, g]]
        out[i] = pos
    for i in range(lo, hi):
        q = _code_dot_jit(codes[i], xe, xo)
        out[i] = a[i] * (2 * out[i] - total_b) + b[i] * total_b + scale[i] * (q - zero[i] * total_s)


def _chunk_bounds(c, n_chunks, m):
    """Rows [lo, hi) of chunk c when m rows are split into n_chunks chunks aligned to ROW_ALIGN."""
    per = (m + n_chunks - 1) // n_chunks
    per = (per + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    return min(m, c * per), min(m, (c + 1) * per)


def _linear_chunk(c, n_chunks, x, w, out, lut_b, xp, xe, xo):
    """Chunk c of n_chunks of out [m] = packed linear w (tuple of kernel buffers) applied to x [n]."""
    sal, bidx, r2, sign, codes, a, b, scale, zero = w
    lo, hi = _chunk_bounds_jit(c, n_chunks, out.shape[0])
    if lo >= hi:
        return
    total_b, total_s = _prepare_jit(x, sal, bidx, r2, codes.shape[1], lut_b, xp, xe, xo)
    _rows_jit(lo, hi, sign, codes, a, b, scale, zero, lut_b, xe, xo, total_b, total_s, out)


def _packed_matvec(x, w, out, n_chunks):
    """out [T, m] = x [T, n] @ W_hat^T for the packed layer w (float32 throughout; w from kernel_buffers)."""
    sign, codes = w[3], w[4]
    groups, width = max(sign.shape[1], 1), max(codes.shape[1], 1)
    for c in numba.prange(n_chunks):
        lut_b = np.empty((groups, 256), dtype=np.float32)
        xp = np.empty(8 * groups, dtype=np.float32)
        xe = np.empty(width, dtype=np.float32)
        xo = np.empty(width, dtype=np.float32)
        for t in range(x.shape[0]):
            _linear_chunk_jit(c, n_chunks, x[t], w, out[t], lut_b, xp, xe, xo)


def sign_patterns() -> np.ndarray:
    """float32 [256, 8]: row v holds +1 where bit t of the byte v is set, else -1 (LSB first)."""
    bits = (np.arange(256)[:, None] >> np.arange(8)[None, :]) & 1
    return np.where(bits == 1, 1.0, -1.0).astype(np.float32)


SIGN_PATTERNS = sign_patterns()  # a constant (read-only), passed to dequantize_rows_grouped
SIGN_PATTERNS.flags.writeable = False


def _dequantize_rows_grouped(lo, hi, n_s, r2, sign, codes, a, b, scale, zero, patterns, out):
    """out [hi - lo, n] = rows lo..hi of the packed weight with the columns grouped: the salient
    columns first (in sal_idx order), then the binarized ones (in bin_idx order).

    The prefill path multiplies these rows with x's columns gathered in the same order
    (``x[:, sal_idx ++ bin_idx]``), so no write is scattered: the codes unpack to consecutive
    entries and each sign byte selects a row of ``patterns`` (``sign_patterns()``, 8 signs as
    +-1.0), which vectorizes. The same float32 operations in the same order as
    ``primitives.quant.rtn_dequantize`` and ``binary_dequantize``, compiled without fast-math (no
    fused multiply-add), so the values equal the torch dequantization bit for bit (a test); only
    their column order differs. ``codes`` may be padded.
    """
    n_b = r2.shape[0]
    full = n_b // 8
    pairs = n_s // 2
    for r in numba.prange(hi - lo):
        i = lo + r
        z = zero[i]
        s = scale[i]
        ai = a[i]
        bi = b[i]
        row = out[r]
        for p in range(pairs):
            byte = codes[i, p]
            row[2 * p] = (np.float32(byte & 15) - z) * s
            row[2 * p + 1] = (np.float32(byte >> 4) - z) * s
        if n_s & 1:
            row[n_s - 1] = (np.float32(codes[i, pairs] & 15) - z) * s
        for g in range(full):
            pat = patterns[sign[i, g]]
            base = n_s + 8 * g
            for t in range(8):
                row[base + t] = r2[8 * g + t] * (ai * pat[t] + bi)
        for j in range(8 * full, n_b):
            bit = (sign[i, j >> 3] >> (j & 7)) & 1
            sgn = np.float32(1.0) if bit else np.float32(-1.0)
            row[n_s + j] = r2[j] * (ai * sgn + bi)


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


def _int4_matvec(x, codes, scale, offset, out):
    """out [T, m] = x [T, n] @ W^T for grouped 4-bit W (codes uint8 [m, n / 2], float32 scale and
    offset [m, n / g]; see ``ptq161.nn.int4``).

    y_i = sum_k scale[i, k] * (sum over group k of q_ij x_j) + offset[i, k] * (sum over group k of x_j).
    A code byte c = lo + 16 hi holds the codes of the even and the odd column, so
    lo x_even + hi x_odd = c x_even + hi (x_odd - 16 x_even) with hi = floor(c / 16): one float
    floor per byte and no integer unpacking (which numba widens to int64 and stops vectorizing).
    Each row is two passes: the byte products into a row buffer, then the group sums. Rows go to
    the threads in blocks of 64.
    """
    m, half = codes.shape
    groups = scale.shape[1]
    per = half // groups  # code bytes per group
    tokens = x.shape[0]
    xe = np.empty((tokens, half), dtype=np.float32)
    xd = np.empty((tokens, half), dtype=np.float32)
    xs = np.zeros((tokens, groups), dtype=np.float32)
    for t in range(tokens):
        for p in range(half):
            e = x[t, 2 * p]
            o = x[t, 2 * p + 1]
            xe[t, p] = e
            xd[t, p] = o - np.float32(16.0) * e
            xs[t, p // per] += e + o
    for blk in numba.prange((m + 63) // 64):
        qs = np.empty(half, dtype=np.float32)
        for t in range(tokens):
            xet = xe[t]
            xdt = xd[t]
            for i in range(blk * 64, min(m, blk * 64 + 64)):
                row = codes[i]
                for p in range(half):
                    c = np.float32(row[p])
                    qs[p] = c * xet[p] + np.floor(c * np.float32(0.0625)) * xdt[p]
                acc = np.float32(0.0)
                for k in range(groups):
                    q = np.float32(0.0)
                    for p in range(k * per, (k + 1) * per):
                        q += qs[p]
                    acc += scale[i, k] * q + offset[i, k] * xs[t, k]
                out[t, i] = acc


# Compiled at the end of the module: the kernels call each other through these globals.
_jit = numba.njit(cache=True, nogil=True, fastmath=True)
_prepare_jit = _jit(_prepare)
_code_dot_jit = numba.njit(cache=True, nogil=True, fastmath=True, inline="always")(_code_dot)
_rows_jit = _jit(_rows)
_chunk_bounds_jit = _jit(_chunk_bounds)
_linear_chunk_jit = _jit(_linear_chunk)
linear_chunk = _linear_chunk_jit
packed_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_packed_matvec)
int8_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_int8_matvec)
int4_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_int4_matvec)
# exact: no fastmath
dequantize_rows_grouped = numba.njit(cache=True, parallel=True, nogil=True)(_dequantize_rows_grouped)
