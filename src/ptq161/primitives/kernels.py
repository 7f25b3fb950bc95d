"""CPU kernels for packed PTQ1.61 linears (numba): sign sums by table lookup, two ways.

For one input vector x [n] and a layer stored as (salient index, binary index, sign bits,
4-bit codes, per-row a, b, scale, zero; per-binary-column r2):

    y_i = a_i * sum_j s_ij x'_j + b_i * sum_j x'_j + scale_i * (sum_k q_ik xs_k - zero_i * sum_k xs_k)

with x' = r2 * x[binary], xs = x[salient], s_ij = +-1. The sign sum is 2 * (sum over set
bits) - sum x'. The 4-bit part is a vectorized multiply-add over the code bytes (each byte
holds the codes of two salient columns). The dense weight is never formed.

Two kernels form the sign sums, the same result up to float32 summation order:
- byte tables (``permute=False``, as T-MAC / bitnet.cpp): one byte of sign bits (8 columns)
  adds one entry of a 256-entry table of subset sums of x', one scalar load per 8 weights;
  the tables are built per call (doubling, 255 adds per 8 columns). Any CPU.
- nibble tables in registers (``permute=True``; ``PERMUTE_SIGNS``, the default on CPUs with
  AVX-512): a 16-entry table of subset sums per 4 columns is exactly one 512-bit register of
  float32, and one ``vpermps`` looks up 16 rows at once, each with its own 4 sign bits. The
  sign bytes are kept a second time in a row-blocked layout, ``sign_t`` [m / 16, G, 16]
  (byte g of 16 consecutive rows side by side; ``codes_t`` likewise for the 4-bit codes),
  so one 16-byte load feeds two lookups for 16 rows, and the 16 row sums come out in the 16
  lanes with no horizontal reduction. ``_permuted_block`` is an LLVM intrinsic (the AVX-512
  permute, or a generic lane-by-lane sequence on CPUs without it, so it runs and is tested
  everywhere; only its speed needs AVX-512). Measured in benchmarks/results/profile_speed.md,
  with both kernels compiled for AVX-512 and for AVX2 only.

Threads: the output rows are split into one contiguous chunk per thread (chunk boundaries on
multiples of 16 rows), and each chunk builds its own tables (a few microseconds) instead of
sharing one: reading tables another core has just written costs more than building them
(measured in benchmarks/results/packed_inference.md). One parallel region per call.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .device import host_has_feature


class KernelBuffers(NamedTuple):
    """What the kernels read of one packed linear (m rows, n_s salient and n_b binary columns), as numpy
    arrays: the stored buffers with float32 factors, and for the nibble-table kernel a row-blocked copy.
    ``PackedPTQ161Linear.kernel_buffers`` makes them; the kernels read a record, or the plain tuple of its
    fields, through the index constants below."""

    sal_idx: np.ndarray  # int16 / int32 [n_s]: salient column indices
    bin_idx: np.ndarray  # int16 / int32 [n_b]: binary column indices
    r2: np.ndarray  # float32 [n_b]: per-column factor of the binary part
    sign: np.ndarray  # uint8 [m, G]: sign bits, LSB first (G = ceil(n_b / 8))
    codes: np.ndarray  # uint8 [m, P]: 4-bit codes, low nibble first (byte tables: padded to P' = CODE_PAD k)
    a: np.ndarray  # float32 [m]: W_bin = r2 * (a * sign + b)
    b: np.ndarray  # float32 [m]
    scale: np.ndarray  # float32 [m]: 4-bit dequantization (code - zero) * scale
    zero: np.ndarray  # float32 [m]
    sign_t: np.ndarray  # uint8 [m // 16, G, 16]: row-blocked signs (nibble tables; else [0, G, 16])
    codes_t: np.ndarray  # uint8 [m // 16, P, 16]: row-blocked codes (nibble tables; else [0, P, 16])


# the kernels index a KernelBuffers (or the plain tuple of its fields, which numba's parallel loops take) by
# these: numba reads a module-level int as a constant, so ``w[SIGN]`` is a typed field access
SAL_IDX, BIN_IDX, R2, SIGN, CODES, A, B, SCALE, ZERO, SIGN_T, CODES_T = range(len(KernelBuffers._fields))


BLOCK = 16  # rows per block of the row-blocked layout: one float32 lane per row in a 512-bit register
CODE_PAD = 32  # code rows padded to a multiple of this many bytes: the 4-bit loop vectorizes without a tail
ROW_ALIGN = 16  # chunk boundaries on multiples of 16 rows (one cache line of float32 outputs, one block)


def host_has_avx512() -> bool:
    """Whether the CPU numba compiles for has AVX-512 F."""
    return host_has_feature("avx512f")


PERMUTE_SIGNS = host_has_avx512()  # the sign-sum kernel the callers use by default (see the module docstring)


def kernel_threads() -> int:
    """How many row chunks the kernels split a layer into: numba's current thread count."""
    return numba.get_num_threads()


def padded_codes(codes: np.ndarray) -> np.ndarray:
    """The 4-bit code bytes [m, P] copied into [m, P rounded up to CODE_PAD] with zero bytes after them."""
    m, p = codes.shape
    out = np.zeros((m, -(-p // CODE_PAD) * CODE_PAD), dtype=np.uint8)
    out[:, :p] = codes
    return out


def row_blocked(rows: np.ndarray) -> np.ndarray:
    """uint8 [m, W] -> [m // BLOCK, W, BLOCK]: byte w of rows BLOCK b .. BLOCK b + 15 side by side
    (the layout of ``_permuted_block``); rows past the last full block are left out."""
    m, w = rows.shape
    full = m // BLOCK * BLOCK
    return np.ascontiguousarray(rows[:full].reshape(m // BLOCK, BLOCK, w).transpose(0, 2, 1))


NIBBLE_BITS = ((np.arange(16)[None, :] >> np.arange(4)[:, None]) & 1).astype(np.float32)  # [4, 16]: bit t of v
NIBBLE_BITS.flags.writeable = False


def _prepare(x, sal, bidx, r2, n_code_bytes, lut_b, xp, xe, xo, permute):
    """Per-input tables of one input vector x [n] for one packed linear; returns (sum x', sum xs).

    xp [>= 8 G]: x' = r2 * x[bidx], zero past n_b up to 8 G (G = ceil(n_b / 8)).
    lut_b [>= G, 256]: byte tables, lut_b[g, v] = sum of x'[8 g + t] over the set bits t of v
    (built by doubling: the entries 2^t .. 2^(t+1) - 1 are the first 2^t plus x'[8 g + t]); or
    with ``permute`` [>= G, >= 32] nibble tables, lut_b[g, 16 h + v] = sum of x'[8 g + 4 h + t]
    over the set bits t of v < 16 (the low nibble of sign byte g is h = 0), 16 entries at once
    as products with the constant bits (``NIBBLE_BITS``: 0 or 1, so exact) and two additions.
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
    if permute:  # 16 lanes at once: entry v = sum of x' over the set bits of v (vectorizes, no chain)
        for g in range(groups):
            for h in range(2):
                x0, x1, x2, x3 = xp[8 * g + 4 * h], xp[8 * g + 4 * h + 1], xp[8 * g + 4 * h + 2], xp[8 * g + 4 * h + 3]
                for v in range(16):
                    lut_b[g, 16 * h + v] = (NIBBLE_BITS[0, v] * x0 + NIBBLE_BITS[1, v] * x1) + (
                        NIBBLE_BITS[2, v] * x2 + NIBBLE_BITS[3, v] * x3
                    )
    else:
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
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16F = ir.VectorType(_F32, BLOCK)
_V16I = ir.VectorType(_I32, BLOCK)
_V16B = ir.VectorType(ir.IntType(8), BLOCK)
_FAST = ("fast",)


def _permute(builder, table, index):
    """<16 x float> result[l] = table[index[l]] (index lanes in 0..15): one ``vpermps`` on AVX-512,
    otherwise a lane-by-lane extract / insert sequence (same values, slow)."""
    if host_has_avx512():
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16F, [_V16F, _V16I]), "llvm.x86.avx512.permvar.sf.512"
        )
        return builder.call(fn, [table, index])
    out = ir.Constant(_V16F, None)
    for lane in range(BLOCK):
        at = ir.Constant(_I32, lane)
        out = builder.insert_element(out, builder.extract_element(table, builder.extract_element(index, at)), at)
    return out


def _splat(builder, value):
    """<16 x float> with every lane ``value``."""
    one = builder.insert_element(ir.Constant(_V16F, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_V16F, None), ir.Constant(_V16I, [0] * BLOCK))


def _permuted_codegen(tokens: int, row_blocks: int = 1, float_codes: bool = False):
    """LLVM IR of ``_permuted_block`` (``tokens`` = 1) or of the many-token intrinsics (``tokens``
    tokens t0 .. t0 + tokens - 1, ``row_blocks`` blocks blk .. blk + row_blocks - 1): per sign byte
    g one 16-byte load per block of 16 rows, split into nibbles once, then per token its two tables
    loaded once and permuted into each block's accumulator (a table load serves ``row_blocks``
    lookups); per code byte p one 16-byte load per block converted once, then two multiply-adds
    per token and block with the token's broadcast xe[p], xo[p]; then the per-row factors. With
    ``float_codes`` the codes come as float32 q - zero, row-blocked [m / 16, 2 P, 16] (``code_floats``
    in ``packed_matmul``): one load per code column and block, two fused multiply-adds per token and block, no
    unpacking in the loop (the zero point is already subtracted)."""

    def codegen(context, builder, signature, args):
        ty = signature.args
        blk_v = args[2]
        arrays = {
            k: context.make_array(ty[k])(context, builder, args[k])
            for k in range(len(ty))
            if isinstance(ty[k], types.Array)
        }
        sa, ca, la, xea, xoa = (arrays[k] for k in (0, 1, 3, 4, 5))
        aa, ba, sca, za, oa = (arrays[k] for k in (6, 7, 8, 9, 12))
        first_token = args[13] if tokens > 1 else None
        groups = cgutils.unpack_tuple(builder, sa.shape, 3)[1]
        n_code = cgutils.unpack_tuple(builder, ca.shape, 3)[1]

        def base_of(arr, ndim, index):
            stride = cgutils.unpack_tuple(builder, arr.strides, ndim)[0]
            return builder.add(builder.ptrtoint(arr.data, _I64), builder.mul(index, stride))

        def token_base(arr, ndim, k):  # address of token k's slice (its first element when tokens == 1)
            if tokens == 1:
                return builder.ptrtoint(arr.data, _I64)
            return base_of(arr, ndim, builder.add(first_token, ir.Constant(_I64, k)))

        blks = [builder.add(blk_v, ir.Constant(_I64, r)) for r in range(row_blocks)]
        sbases, cbases = [base_of(sa, 3, v) for v in blks], [base_of(ca, 3, v) for v in blks]
        gstride = cgutils.unpack_tuple(builder, la.strides, 2 if tokens == 1 else 3)[0 if tokens == 1 else 1]
        lbases = [token_base(la, 3, k) for k in range(tokens)]
        ebases = [token_base(xea, 2, k) for k in range(tokens)]
        obases = [token_base(oa, 2, k) for k in range(tokens)]
        oddbases = [token_base(xoa, 2, k) for k in range(tokens)]
        if tokens == 1:
            totals = [[context.cast(builder, args[k], ty[k], types.float32) for k in (10, 11)]]
        else:
            tba, tsa = arrays[10], arrays[11]
            totals = [
                [
                    builder.load(builder.gep(arr.data, [builder.add(first_token, ir.Constant(_I64, k))]))
                    for arr in (tba, tsa)
                ]
                for k in range(tokens)
            ]
        c4, c16, c64 = ir.Constant(_I64, 4), ir.Constant(_I64, BLOCK), ir.Constant(_I64, 64)
        low_mask, shift = ir.Constant(_V16I, [15] * BLOCK), ir.Constant(_V16I, [4] * BLOCK)

        def load(address, vtype, align=1):
            return builder.load(builder.inttoptr(address, vtype.as_pointer()), align=align)

        def nibbles(address):
            wide = builder.zext(load(address, _V16B), _V16I)
            return builder.and_(wide, low_mask), builder.lshr(wide, shift)

        def add_to(acc, value):
            builder.store(builder.fadd(builder.load(acc), value, flags=_FAST), acc)

        zero_vec = ir.Constant(_V16F, [0.0] * BLOCK)
        pos_accs = [[cgutils.alloca_once_value(builder, zero_vec) for _ in blks] for _ in range(tokens)]
        code_accs = [[cgutils.alloca_once_value(builder, zero_vec) for _ in blks] for _ in range(tokens)]
        with cgutils.for_range(builder, groups) as loop:
            split = [nibbles(builder.add(base, builder.mul(loop.index, c16))) for base in sbases]
            offset = builder.mul(loop.index, gstride)
            for k in range(tokens):
                row = builder.add(lbases[k], offset)
                t_lo, t_hi = load(row, _V16F, 4), load(builder.add(row, c64), _V16F, 4)
                for r, (lo, hi) in enumerate(split):
                    pair = builder.fadd(_permute(builder, t_lo, lo), _permute(builder, t_hi, hi), flags=_FAST)
                    add_to(pos_accs[k][r], pair)
        if float_codes:
            n_code = builder.udiv(n_code, ir.Constant(_I64, 2))
        with cgutils.for_range(builder, n_code) as loop:
            if float_codes:  # columns 2 p and 2 p + 1 of each block: 16 floats each
                at = builder.mul(loop.index, ir.Constant(_I64, 2 * BLOCK * 4))
                floats = [
                    (load(builder.add(base, at), _V16F, 4), load(builder.add(builder.add(base, at), c64), _V16F, 4))
                    for base in cbases
                ]
            else:
                split = [nibbles(builder.add(base, builder.mul(loop.index, c16))) for base in cbases]
                floats = [(builder.uitofp(lo, _V16F), builder.uitofp(hi, _V16F)) for lo, hi in split]
            offset = builder.mul(loop.index, c4)
            for k in range(tokens):
                even = _splat(builder, load(builder.add(ebases[k], offset), _F32, 4))
                odd = _splat(builder, load(builder.add(oddbases[k], offset), _F32, 4))
                for r, (low, high) in enumerate(floats):
                    if float_codes:  # two multiply-adds into the accumulator
                        add_to(code_accs[k][r], builder.fmul(low, even, flags=_FAST))
                        add_to(code_accs[k][r], builder.fmul(high, odd, flags=_FAST))
                    else:
                        term = builder.fadd(
                            builder.fmul(low, even, flags=_FAST), builder.fmul(high, odd, flags=_FAST), flags=_FAST
                        )
                        add_to(code_accs[k][r], term)
        two = ir.Constant(_V16F, [2.0] * BLOCK)
        for r, blk_r in enumerate(blks):
            first = builder.mul(blk_r, c16)

            def rows(arr, first=first):
                return builder.load(builder.bitcast(builder.gep(arr.data, [first]), _V16F.as_pointer()), align=4)

            a_rows, b_rows, s_rows, z_rows = rows(aa), rows(ba), rows(sca), rows(za)
            for k in range(tokens):
                tb, ts = (_splat(builder, v) for v in totals[k])
                pos, q = builder.load(pos_accs[k][r]), builder.load(code_accs[k][r])
                sign_part = builder.fmul(
                    a_rows, builder.fsub(builder.fmul(two, pos, flags=_FAST), tb, flags=_FAST), flags=_FAST
                )
                if float_codes:
                    code_part = builder.fmul(s_rows, q, flags=_FAST)
                else:
                    code_part = builder.fmul(
                        s_rows, builder.fsub(q, builder.fmul(z_rows, ts, flags=_FAST), flags=_FAST), flags=_FAST
                    )
                y = builder.fadd(
                    builder.fadd(sign_part, builder.fmul(b_rows, tb, flags=_FAST), flags=_FAST),
                    code_part,
                    flags=_FAST,
                )
                out_at = builder.add(obases[k], builder.mul(first, c4))
                builder.store(y, builder.inttoptr(out_at, _V16F.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


def _is_c_array(t, dtype, ndim: int) -> bool:
    return isinstance(t, types.Array) and t.dtype == dtype and t.ndim == ndim and t.layout == "C"


@intrinsic
def _permuted_block(typingctx, sign_t, codes_t, blk, lut_b, xe, xo, a, b, scale, zero, total_b, total_s, out):
    """out[16 blk + r] for r < 16, the value ``_rows``' byte-table path computes:
    a (2 pos - total_b) + b total_b + scale (q - zero total_s), with pos the sum of x' over the
    row's set sign bits (from the nibble tables lut_b [G, >= 32], see ``_prepare``) and q the
    row's 4-bit dot product with (xe, xo).

    sign_t uint8 [m / 16, G, 16], codes_t uint8 [m / 16, P, 16] (``row_blocked``), blk int64 a
    block index, xe, xo float32 [>= P], a, b, scale, zero, out float32 [>= 16 (blk + 1)], all C order.
    """
    f32 = types.float32
    ok = (
        _is_c_array(sign_t, types.uint8, 3)
        and _is_c_array(codes_t, types.uint8, 3)
        and isinstance(blk, types.Integer)
        and _is_c_array(lut_b, f32, 2)
        and all(_is_c_array(t, f32, 1) for t in (xe, xo, a, b, scale, zero, out))
        and isinstance(total_b, types.Float)
        and isinstance(total_s, types.Float)
    )
    if not ok:
        return None
    sig = types.void(sign_t, codes_t, types.int64, lut_b, xe, xo, a, b, scale, zero, total_b, total_s, out)
    return sig, _permuted_codegen(1)


PREFILL_TOKENS = 4  # tokens per pass of the prefill kernels
PREFILL_BLOCKS = 4  # blocks of 16 rows per pass of ``_permuted_tile``: each table load serves 4 lookups


def _tokens_signature(sign_t, codes_t, blk, luts, xe, xo, a, b, scale, zero, total_b, total_s, out, t0):
    """The signature of the many-token intrinsics for these argument types, or None if they do not fit."""
    f32 = types.float32
    ok = (
        _is_c_array(sign_t, types.uint8, 3)
        and _is_c_array(codes_t, f32, 3)
        and isinstance(blk, types.Integer)
        and isinstance(t0, types.Integer)
        and _is_c_array(luts, f32, 3)
        and all(_is_c_array(t, f32, 2) for t in (xe, xo, out))
        and all(_is_c_array(t, f32, 1) for t in (a, b, scale, zero, total_b, total_s))
    )
    if not ok:
        return None
    return types.void(sign_t, codes_t, types.int64, luts, xe, xo, a, b, scale, zero, total_b, total_s, out, types.int64)


@intrinsic
def _permuted_block_tokens(typingctx, sign_t, codes_t, blk, luts, xe, xo, a, b, scale, zero, total_b, total_s, out, t0):
    """``_permuted_block`` for PREFILL_TOKENS tokens t0 .. t0 + 3 at once: each 16-byte load of sign
    bytes (16 rows) is split once and each load of code values serves every token. codes_t float32
    q - zero [m / 16, 2 P, 16] (``code_floats`` in ``packed_matmul``, not the code bytes), luts float32
    [T, G, >= 32], xe, xo [T, >= P], total_b, total_s [T], out [T, m] (token-major, C order); t0 int64."""
    sig = _tokens_signature(sign_t, codes_t, blk, luts, xe, xo, a, b, scale, zero, total_b, total_s, out, t0)
    return None if sig is None else (sig, _permuted_codegen(PREFILL_TOKENS, 1, True))


@intrinsic
def _permuted_tile(typingctx, sign_t, codes_t, blk, luts, xe, xo, a, b, scale, zero, total_b, total_s, out, t0):
    """``_permuted_block_tokens`` for the PREFILL_BLOCKS blocks blk .. blk + 3 at once (rows 16 blk ..
    16 blk + 63): each token's tables are loaded once per sign byte for all four blocks, so the
    tables (which outgrow the L1 cache: 4 tokens x G x 128 bytes) are read a quarter as often.
    Same arguments as ``_permuted_block_tokens``."""
    sig = _tokens_signature(sign_t, codes_t, blk, luts, xe, xo, a, b, scale, zero, total_b, total_s, out, t0)
    return None if sig is None else (sig, _permuted_codegen(PREFILL_TOKENS, PREFILL_BLOCKS, True))


def _code_dot(row, xe, xo):
    """sum_p low(row[p]) * xe[p] + high(row[p]) * xo[p] for one padded code row [P'] (nibbles split in float)."""
    q = np.float32(0.0)
    for p in range(row.shape[0]):
        c = np.float32(row[p])
        hi = np.floor(c * np.float32(0.0625))
        q += (c - np.float32(16.0) * hi) * xe[p] + hi * xo[p]
    return q


def _rows(lo, hi, sign, codes, sign_t, codes_t, a, b, scale, zero, lut_b, xe, xo, total_b, total_s, out, permute):
    """out[i] for rows lo <= i < hi (lo a multiple of 16). ``permute``: the full blocks of 16 rows
    by ``_permuted_block`` in one pass, the rows past the last full block from the nibble tables
    one by one. Otherwise two passes: the sign sums from the byte tables (4 rows at a time, sums
    parked in out), then the 4-bit dot products and the per-row factors."""
    groups = sign.shape[1]
    done = lo  # rows finished in one pass
    if permute:
        done = max(lo, min(hi, BLOCK * sign_t.shape[0]) // BLOCK * BLOCK)
        for blk in range(lo // BLOCK, done // BLOCK):
            _permuted_block(sign_t, codes_t, blk, lut_b, xe, xo, a, b, scale, zero, total_b, total_s, out)
        for i in range(done, hi):
            pos = np.float32(0.0)
            for g in range(groups):
                byte = sign[i, g]
                pos += lut_b[g, byte & 15] + lut_b[g, 16 + (byte >> 4)]
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


def _linear_chunk(c, n_chunks, x, w, out, lut_b, xp, xe, xo, permute):
    """Chunk c of n_chunks of out [m] = packed linear w (``KernelBuffers``) applied to x [n];
    ``permute``: the nibble-table kernel (w must carry the row-blocked layouts), else byte tables."""
    lo, hi = _chunk_bounds_jit(c, n_chunks, out.shape[0])
    if lo >= hi:
        return
    total_b, total_s = _prepare_jit(x, w[SAL_IDX], w[BIN_IDX], w[R2], w[CODES].shape[1], lut_b, xp, xe, xo, permute)
    _rows_jit(
        lo, hi, w[SIGN], w[CODES], w[SIGN_T], w[CODES_T], w[A], w[B], w[SCALE], w[ZERO], lut_b, xe, xo, total_b,
        total_s, out, permute,
    )  # fmt: skip


def _packed_matvec(x, w, out, n_chunks, permute):
    """out [T, m] = x [T, n] @ W_hat^T for the packed layer w (float32 throughout; w from kernel_buffers);
    ``permute`` picks the sign-sum kernel (``PERMUTE_SIGNS`` on this CPU)."""
    groups, width = max(w[SIGN].shape[1], 1), max(w[CODES].shape[1], 1)
    for c in numba.prange(n_chunks):
        lut_b = np.empty((groups, 32 if permute else 256), dtype=np.float32)
        xp = np.empty(8 * groups, dtype=np.float32)
        xe = np.empty(width, dtype=np.float32)
        xo = np.empty(width, dtype=np.float32)
        for t in range(x.shape[0]):
            _linear_chunk_jit(c, n_chunks, x[t], w, out[t], lut_b, xp, xe, xo, permute)


PREFILL_TILE = 64  # tokens whose tables exist at a time in ``packed_matmul`` (64 x G x 128 bytes)


def _packed_matmul(x, w, out, n_chunks):
    """out [T, m] = x [T, n] @ W_hat^T for many tokens with the nibble-table kernel (w from
    ``kernel_buffers(permute=True)``). Per tile of PREFILL_TILE tokens: every token's tables are
    built once (the tokens shared among the threads), then each thread takes a chunk of rows and
    runs ``_permuted_tile`` over its blocks, 4 tokens and 4 blocks of 16 rows at a time, so a
    block's sign and code bytes are loaded and split once for 4 tokens and a token's tables once
    for 4 blocks (``_permuted_block_tokens`` for the blocks past the last group of 4); the other
    tokens and the rows past the last block go through the one-token paths."""
    sal, bidx, r2, sign, codes, a, b = w[SAL_IDX], w[BIN_IDX], w[R2], w[SIGN], w[CODES], w[A], w[B]
    scale, zero, sign_t, codes_t = w[SCALE], w[ZERO], w[SIGN_T], w[CODES_T]
    tokens, m = x.shape[0], out.shape[1]
    groups, width = max(sign.shape[1], 1), max(codes.shape[1], 1)
    luts = np.empty((PREFILL_TILE, groups, 32), dtype=np.float32)
    xps = np.empty((PREFILL_TILE, 8 * groups), dtype=np.float32)
    xe = np.zeros((PREFILL_TILE, width), dtype=np.float32)
    xo = np.zeros((PREFILL_TILE, width), dtype=np.float32)
    tb = np.empty(PREFILL_TILE, dtype=np.float32)
    ts = np.empty(PREFILL_TILE, dtype=np.float32)
    tile_out = np.empty((PREFILL_TILE, m), dtype=np.float32)
    full = BLOCK * sign_t.shape[0]
    code_floats = np.empty((sign_t.shape[0], 2 * codes_t.shape[1], BLOCK), dtype=np.float32)
    for blk in numba.prange(sign_t.shape[0]):  # q - zero of every code, once a call (row-blocked)
        for p in range(codes_t.shape[1]):
            for lane in range(BLOCK):
                byte = codes_t[blk, p, lane]
                z = zero[BLOCK * blk + lane]
                code_floats[blk, 2 * p, lane] = np.float32(byte & 15) - z
                code_floats[blk, 2 * p + 1, lane] = np.float32(byte >> 4) - z
    for t_lo in range(0, tokens, PREFILL_TILE):
        nt = min(PREFILL_TILE, tokens - t_lo)
        for t in numba.prange(nt):
            tb[t], ts[t] = _prepare_jit(x[t_lo + t], sal, bidx, r2, codes.shape[1], luts[t], xps[t], xe[t], xo[t], True)
        n_pass = nt // PREFILL_TOKENS * PREFILL_TOKENS
        for c in numba.prange(n_chunks):
            lo, hi = _chunk_bounds_jit(c, n_chunks, m)
            if lo >= hi:
                continue
            done = max(lo, min(hi, full) // BLOCK * BLOCK)
            first, last = lo // BLOCK, done // BLOCK
            tiled = first + (last - first) // PREFILL_BLOCKS * PREFILL_BLOCKS
            for t0 in range(0, n_pass, PREFILL_TOKENS):
                for blk in range(first, tiled, PREFILL_BLOCKS):
                    _permuted_tile(sign_t, code_floats, blk, luts, xe, xo, a, b, scale, zero, tb, ts, tile_out, t0)
                for blk in range(tiled, last):
                    _permuted_block_tokens(
                        sign_t, code_floats, blk, luts, xe, xo, a, b, scale, zero, tb, ts, tile_out, t0
                    )
            for t in range(n_pass, nt):
                for blk in range(first, last):
                    _permuted_block(
                        sign_t, codes_t, blk, luts[t], xe[t], xo[t], a, b, scale, zero, tb[t], ts[t], tile_out[t]
                    )
            for t in range(nt):
                if done < hi:  # rows past the last full block, one token at a time
                    _rows_jit(
                        done,
                        hi,
                        sign,
                        codes,
                        sign_t,
                        codes_t,
                        a,
                        b,
                        scale,
                        zero,
                        luts[t],
                        xe[t],
                        xo[t],
                        tb[t],
                        ts[t],
                        tile_out[t],
                        True,
                    )
                for i in range(lo, hi):
                    out[t_lo + t, i] = tile_out[t, i]


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
chunk_bounds = _chunk_bounds_jit
_linear_chunk_jit = _jit(_linear_chunk)
linear_chunk = _linear_chunk_jit
packed_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_packed_matvec)
packed_matmul = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_packed_matmul)
int8_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_int8_matvec)
int4_matvec = numba.njit(cache=True, parallel=True, nogil=True, fastmath=True)(_int4_matvec)
# exact: no fastmath
dequantize_rows_grouped = numba.njit(cache=True, parallel=True, nogil=True)(_dequantize_rows_grouped)
