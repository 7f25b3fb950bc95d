"""CPU kernels for packed PTQ1.61 linears (numba): sign sums by masked vector adds or by table lookup.

For one input vector x [n] and a layer stored as (salient index, binary index, sign bits,
4-bit codes, per-row a, b, scale, zero; per-binary-column r2):

    y_i = a_i * sum_j s_ij x'_j + b_i * sum_j x'_j + scale_i * (sum_k q_ik xs_k - zero_i * sum_k xs_k)

with x' = r2 * x[binary], xs = x[salient], s_ij = +-1. The sign sum is 2 * (sum over set
bits) - sum x'. The 4-bit part is a vectorized multiply-add over the code bytes (each byte
holds the codes of two salient columns). The dense weight is never formed.

Two kernels form the sign sums, the same result up to float32 summation order:
- table lookup (``masked=False``, as T-MAC / bitnet.cpp): one byte of sign bits (8 columns)
  adds one entry of a 256-entry table of subset sums of x'; the tables are built per call
  (doubling, 255 adds per 8 columns), the 4-bit nibbles are split in float arithmetic.
- masked adds (``masked=True``; ``MASKED_SIGNS``, the default on CPUs with AVX-512): two sign
  bytes are a 16-lane mask and one masked vector add accumulates x'[16 k .. 16 k + 15] where
  the bits are set. ``_masked_rows`` is an LLVM intrinsic (a ``select`` on ``<16 x i1>``,
  which AVX-512 compiles to one ``vaddps {k}``) that does 8 rows at a time in one pass: sign
  sums, 4-bit dot products (16 code bytes a step, shared x loads) and the per-row factors.
  No tables. Compiled for an AVX2-only CPU the same IR becomes compare-and-blend sequences,
  slower than the tables; both measured in benchmarks/results/profile_speed.md, so the tables
  stay the default there.

Threads: the output rows are split into one contiguous chunk per thread, and each chunk
builds its own tables (a few microseconds) instead of sharing one: reading tables another
core has just written costs more than building them (measured in
benchmarks/results/packed_inference.md). One parallel region per call.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

MASKED_ROWS = 8  # rows per masked-add call: 8 independent accumulator chains hide the add latency
CODE_PAD = 32  # code rows padded to a multiple of this many bytes: the 4-bit loop vectorizes without a tail
ROW_ALIGN = 16  # chunk boundaries on multiples of 16 rows (one cache line of float32 outputs)


def host_has_avx512() -> bool:
    """Whether this CPU has AVX-512 F and BW (16-bit lane masks loaded from memory); LLVM's host view."""
    feats = llvm_binding.get_host_cpu_features()
    return bool(feats.get("avx512f", False) and feats.get("avx512bw", False))


MASKED_SIGNS = host_has_avx512()  # the sign-sum kernel the callers use by default (see the module docstring)


def kernel_threads() -> int:
    """How many row chunks the kernels split a layer into: numba's current thread count."""
    return numba.get_num_threads()


def padded_codes(codes: np.ndarray) -> np.ndarray:
    """The 4-bit code bytes [m, P] copied into [m, P rounded up to CODE_PAD] with zero bytes after them."""
    m, p = codes.shape
    out = np.zeros((m, -(-p // CODE_PAD) * CODE_PAD), dtype=np.uint8)
    out[:, :p] = codes
    return out


def _prepare(x, sal, bidx, r2, n_code_bytes, lut_b, xp, xe, xo, tables):
    """Per-input buffers of one input vector x [n] for one packed linear; returns (sum x', sum xs).

    xp [>= 8 G]: x' = r2 * x[bidx], zero past n_b up to 8 G (G = ceil(n_b / 8)).
    lut_b [>= G, 256] (only when ``tables``): lut_b[g, v] = sum of x'[8 g + t] over the set bits t
    of v (built by doubling: the entries 2^t .. 2^(t+1) - 1 are the first 2^t plus x'[8 g + t]).
    xe, xo [>= padded P]: the even / odd salient inputs x[sal[2 p]], x[sal[2 p + 1]], zero past the end.
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
    if tables:
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


_F32 = ir.FloatType()
_I64 = ir.IntType(64)


def _row_bases(context, builder, arrty, arr):
    """(data address as i64, row stride in bytes) of a 2-D array value."""
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.ptrtoint(ary.data, _I64), cgutils.unpack_tuple(builder, ary.strides, 2)[0], ary


def _vector_sums(builder, rows, count, lanes, terms_of):
    """One <lanes x float> accumulator per row (independent add chains), after ``count`` steps k of
    ``acc = add(acc, xv, row, k)`` for each ``(xv, add)`` in ``terms_of(k)``; the x vectors are
    loaded once per step and shared by the rows. Returns the accumulators' values."""
    vec = ir.VectorType(_F32, lanes)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * lanes)) for _ in rows]
    with cgutils.for_range(builder, count) as loop:
        terms = terms_of(loop.index)
        for r, row in enumerate(rows):
            acc = builder.load(accs[r])
            for xv, add in terms:
                acc = add(acc, xv, row, loop.index)
            builder.store(acc, accs[r])
    return [builder.load(a) for a in accs]


def _reduce(builder, vec):
    """Horizontal float sum of a <n x float> (reassociated: a shuffle tree)."""
    lanes = vec.type.count
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_F32, [_F32, vec.type]), f"llvm.vector.reduce.fadd.v{lanes}f32"
    )
    return builder.call(fn, [ir.Constant(_F32, 0.0), vec], fastmath=("fast",))


def _masked_rows_codegen(context, builder, signature, args):
    """LLVM IR of ``_masked_rows``: for MASKED_ROWS rows, the sign sums by masked adds (16 lanes per
    two sign bytes, then 8 lanes for an odd last byte), the 4-bit dot products over the padded code
    bytes (16 bytes a step, nibbles split with integer and / shift), and the per-row combination."""
    sign_v, codes_v, i_v, xp_v, xe_v, xo_v, a_v, b_v, scale_v, zero_v, tb_v, ts_v, out_v = args
    ty = signature.args
    sbase, sstride, sary = _row_bases(context, builder, ty[0], sign_v)
    cbase, cstride, cary = _row_bases(context, builder, ty[1], codes_v)
    n_bytes = cgutils.unpack_tuple(builder, sary.shape, 2)[1]
    n_code = cgutils.unpack_tuple(builder, cary.shape, 2)[1]
    ptrs = {}
    for name, t, v in (
        ("xp", ty[3], xp_v),
        ("xe", ty[4], xe_v),
        ("xo", ty[5], xo_v),
        ("a", ty[6], a_v),
        ("b", ty[7], b_v),
        ("scale", ty[8], scale_v),
        ("zero", ty[9], zero_v),
        ("out", ty[12], out_v),
    ):
        ptrs[name] = context.make_array(t)(context, builder, v).data  # fmt: skip
    row_ids = [builder.add(i_v, ir.Constant(_I64, r)) for r in range(MASKED_ROWS)]
    srows = [builder.add(sbase, builder.mul(r, sstride)) for r in row_ids]
    crows = [builder.add(cbase, builder.mul(r, cstride)) for r in row_ids]
    two, c16 = ir.Constant(_I64, 2), ir.Constant(_I64, 16)

    def vload(name, index, lanes):
        ptr = builder.bitcast(builder.gep(ptrs[name], [index]), ir.VectorType(_F32, lanes).as_pointer())
        return builder.load(ptr, align=4)

    def masked_add(lanes, first_byte):
        def add(acc, xv, row, k):
            mptr = builder.inttoptr(builder.add(row, first_byte(k)), ir.IntType(lanes).as_pointer())
            mask = builder.bitcast(builder.load(mptr, align=1), ir.VectorType(ir.IntType(1), lanes))
            return builder.select(mask, builder.fadd(acc, xv, flags=("fast",)), acc)

        return add

    pairs = builder.udiv(n_bytes, two)
    odd_start = builder.mul(pairs, two)
    sums16 = _vector_sums(
        builder, srows, pairs, 16,
        lambda k: [(vload("xp", builder.mul(k, c16), 16), masked_add(16, lambda k: builder.mul(k, two)))],
    )  # fmt: skip
    sums8 = _vector_sums(
        builder, srows, builder.urem(n_bytes, two), 8,
        lambda k: [(vload("xp", builder.mul(builder.add(odd_start, k), ir.Constant(_I64, 8)), 8),
                    masked_add(8, lambda k: builder.add(odd_start, k)))],
    )  # fmt: skip
    v16i8, v16i32, v16f = ir.VectorType(ir.IntType(8), 16), ir.VectorType(ir.IntType(32), 16), ir.VectorType(_F32, 16)

    def code_terms(k):
        xe = vload("xe", builder.mul(k, c16), 16)
        xo = vload("xo", builder.mul(k, c16), 16)

        def dot(acc, xv, row, k):
            cptr = builder.inttoptr(builder.add(row, builder.mul(k, c16)), v16i8.as_pointer())
            wide = builder.zext(builder.load(cptr, align=1), v16i32)
            low = builder.uitofp(builder.and_(wide, ir.Constant(v16i32, [15] * 16)), v16f)
            high = builder.uitofp(builder.lshr(wide, ir.Constant(v16i32, [4] * 16)), v16f)
            acc = builder.fadd(acc, builder.fmul(low, xe, flags=("fast",)), flags=("fast",))
            return builder.fadd(acc, builder.fmul(high, xv, flags=("fast",)), flags=("fast",))

        return [(xo, dot)]

    dots = _vector_sums(builder, crows, builder.udiv(n_code, c16), 16, code_terms)
    fast = ("fast",)
    for r in range(MASKED_ROWS):
        pos = builder.fadd(_reduce(builder, sums16[r]), _reduce(builder, sums8[r]), flags=fast)
        q = _reduce(builder, dots[r])
        ai, bi, si, zi = (builder.load(builder.gep(ptrs[n], [row_ids[r]])) for n in ("a", "b", "scale", "zero"))
        sign_part = builder.fmul(
            ai, builder.fsub(builder.fmul(ir.Constant(_F32, 2.0), pos, flags=fast), tb_v, flags=fast), flags=fast
        )
        mean_part = builder.fmul(bi, tb_v, flags=fast)
        code_part = builder.fmul(si, builder.fsub(q, builder.fmul(zi, ts_v, flags=fast), flags=fast), flags=fast)
        y = builder.fadd(builder.fadd(sign_part, mean_part, flags=fast), code_part, flags=fast)
        builder.store(y, builder.gep(ptrs["out"], [row_ids[r]]))
    return context.get_dummy_value()


def _is_c_array(t, dtype, ndim: int) -> bool:
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == ndim and t.layout == "C"


@intrinsic
def _masked_rows(typingctx, sign, codes, i, xp, xe, xo, a, b, scale, zero, total_b, total_s, out):
    """out[i + r] for r < MASKED_ROWS, the same value as ``_rows``' table path computes:
    a (2 pos - total_b) + b total_b + scale (q - zero total_s), with pos the sum of xp over the set
    sign bits of the row and q its 4-bit dot product with (xe, xo).

    sign uint8 [m, G] (bit t of byte g is column 8 g + t), codes uint8 [m, P'] (P' a multiple of
    16), i int64 with i + MASKED_ROWS <= m; xp float32 [>= 8 G], xe, xo [>= P'], a, b, scale,
    zero, out float32 [m], all C order. Pairs of sign bytes are read as 16-bit lane masks
    (little-endian: bit t is lane t), so the sign rows need no padding.
    """
    f32 = types.float32
    ok = (
        _is_c_array(sign, types.uint8, 2)
        and _is_c_array(codes, types.uint8, 2)
        and isinstance(i, types.Integer)
        and all(_is_c_array(t, f32, 1) for t in (xp, xe, xo, a, b, scale, zero, out))
        and total_b == f32
        and total_s == f32
    )
    if not ok:
        return None
    sig = types.void(sign, codes, types.int64, xp, xe, xo, a, b, scale, zero, f32, f32, out)
    return sig, _masked_rows_codegen


def _code_dot(row, xe, xo):
    """sum_p low(row[p]) * xe[p] + high(row[p]) * xo[p] for one padded code row [P'] (nibbles split in float)."""
    q = np.float32(0.0)
    for p in range(row.shape[0]):
        c = np.float32(row[p])
        hi = np.floor(c * np.float32(0.0625))
        q += (c - np.float32(16.0) * hi) * xe[p] + hi * xo[p]
    return q


def _rows(lo, hi, sign, codes, a, b, scale, zero, lut_b, xp, xe, xo, total_b, total_s, out, masked):
    """out[i] for rows lo <= i < hi. ``masked``: 8 rows at a time in one pass by ``_masked_rows``
    (masked adds over xp), the rest one by one from the bits. Otherwise two passes: the sign sums
    from the tables lut_b (4 rows at a time, sums parked in out), then the 4-bit dot products and
    the per-row factors."""
    groups = sign.shape[1]
    done = lo  # rows finished by the masked path
    if masked:
        done = lo + (hi - lo) // MASKED_ROWS * MASKED_ROWS
        for i in range(lo, done, MASKED_ROWS):
            _masked_rows(sign, codes, i, xp, xe, xo, a, b, scale, zero, total_b, total_s, out)
        for i in range(done, hi):  # fewer than 8 rows left (layers whose height is not a multiple of 8)
            pos = np.float32(0.0)
            for j in range(8 * groups):
                if (sign[i, j >> 3] >> (j & 7)) & 1:
                    pos += xp[j]
            out[i] = pos
    else:
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
    for i in range(done, hi):
        q = _code_dot_jit(codes[i], xe, xo)
        out[i] = a[i] * (2 * out[i] - total_b) + b[i] * total_b + scale[i] * (q - zero[i] * total_s)


def _chunk_bounds(c, n_chunks, m):
    """Rows [lo, hi) of chunk c when m rows are split into n_chunks chunks aligned to ROW_ALIGN."""
    per = (m + n_chunks - 1) // n_chunks
    per = (per + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
    return min(m, c * per), min(m, (c + 1) * per)


def _linear_chunk(c, n_chunks, x, w, out, lut_b, xp, xe, xo, masked):
    """Chunk c of n_chunks of out [m] = packed linear w (tuple of kernel buffers) applied to x [n];
    ``masked``: sign sums by masked adds (lut_b unused) instead of tables."""
    sal, bidx, r2, sign, codes, a, b, scale, zero = w
    lo, hi = _chunk_bounds_jit(c, n_chunks, out.shape[0])
    if lo >= hi:
        return
    total_b, total_s = _prepare_jit(x, sal, bidx, r2, codes.shape[1], lut_b, xp, xe, xo, not masked)
    _rows_jit(lo, hi, sign, codes, a, b, scale, zero, lut_b, xp, xe, xo, total_b, total_s, out, masked)


def _packed_matvec(x, w, out, n_chunks, masked):
    """out [T, m] = x [T, n] @ W_hat^T for the packed layer w (float32 throughout; w from kernel_buffers);
    ``masked`` picks the sign-sum kernel (``MASKED_SIGNS`` on this CPU)."""
    sign, codes = w[3], w[4]
    groups, width = max(sign.shape[1], 1), max(codes.shape[1], 1)
    for c in numba.prange(n_chunks):
        lut_b = np.empty((1 if masked else groups, 256), dtype=np.float32)
        xp = np.empty(8 * groups, dtype=np.float32)
        xe = np.empty(width, dtype=np.float32)
        xo = np.empty(width, dtype=np.float32)
        for t in range(x.shape[0]):
            _linear_chunk_jit(c, n_chunks, x[t], w, out[t], lut_b, xp, xe, xo, masked)


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
