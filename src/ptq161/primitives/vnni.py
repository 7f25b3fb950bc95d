"""Exact integer products for the int8 embedding / lm_head at decode time (numba, AVX-512 VNNI).

For int8 weights w [m, n] with per-row scales and float32 inputs x [n] the float kernel
(``kernels.int8_matvec``) widens every weight byte to float32 and does one multiply-add per
weight. Here x is written instead as

    x_hat = lo + q * D,  lo = min x,  q = (max x - lo) / (2^24 - 1),  D = round((x - lo) / q)

with D a 24-bit integer split into three unsigned bytes, D = 65536 d0 + 256 d1 + d2, so that

    sum_j w_ij x_hat_j = lo * rowsum_i + q * (65536 S0_i + 256 S1_i + S2_i),  S_k,i = sum_j w_ij d_kj.

Each S is an exact int32 sum (|S| <= 255 * 127 * n < 2^31 for n <= MAX_COLUMNS), made by
``vpdpbusd``: 64 unsigned-by-signed byte products a instruction, summed 4 a lane. The only
rounding is x -> x_hat, |x - x_hat| <= q / 2 = (max x - min x) * 3e-8, about float32's own
precision, and the combination is done in float64: the logits agree with the float kernel to
float32 rounding (tests), for three byte products per 64 weights instead of 12 widen /
convert / multiply-add steps.

The weights are copied once into a row-blocked layout ``w_blk`` int32 [ceil(m / 16), ceil(n / 4), 16]:
element (b, c, r) holds the 4 bytes w[16 b + r, 4 c : 4 c + 4] (zero padded), so one 64-byte load
gives 16 rows x 4 columns, the activation's 4 bytes of those columns are broadcast to the 16
lanes, and the 16 row sums land in 16 lanes with no horizontal reduction (as the nibble-table
kernel of ``kernels`` does for the packed linears). ``_dot_block`` is an LLVM intrinsic: the VNNI
instruction where the CPU has it, otherwise generic integer code with the same sums (slow), so it
runs and is tested everywhere.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .kernels import BLOCK, _is_c_array, host_has_feature

MAX_COLUMNS = 65000  # 255 * 127 * n stays below 2^31: the int32 sums cannot overflow
LIMBS = 3  # bytes of the 24-bit fixed-point input
_SPAN = float(2**24 - 1)

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16I = ir.VectorType(_I32, BLOCK)
_V64B = ir.VectorType(_I8, 4 * BLOCK)
_V64I = ir.VectorType(_I32, 4 * BLOCK)


def host_has_vnni() -> bool:
    """Whether the CPU numba compiles for has AVX-512 VNNI (``vpdpbusd`` on 512-bit registers)."""
    return host_has_feature("avx512vnni")


HEAD_VNNI = host_has_vnni()  # Int8Linear's decode kernel: this one where VNNI exists, else the float kernel


def row_blocked_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 w [m, n] -> (w_blk int32 [ceil(m / 16), ceil(n / 4), 16] (see the module docstring),
    rowsum int32 [m], the row sums of w)."""
    m, n = w.shape
    mp, np4 = -(-m // BLOCK) * BLOCK, -(-n // 4) * 4
    padded = np.zeros((mp, np4), dtype=np.int8)
    padded[:m, :n] = w
    blocked = padded.reshape(mp // BLOCK, BLOCK, np4 // 4, 4).transpose(0, 2, 1, 3)
    w_blk = np.ascontiguousarray(blocked).view(np.int32).reshape(mp // BLOCK, np4 // 4, BLOCK)
    return w_blk, w.astype(np.int32).sum(axis=1, dtype=np.int32)


def _dpbusd(builder, acc, a, b):
    """acc + (16 lanes of) the sum of 4 products unsigned byte of a x signed byte of b."""
    if HEAD_VNNI:
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16I, [_V16I, _V16I, _V16I]), "llvm.x86.avx512.vpdpbusd.512"
        )
        return builder.call(fn, [acc, a, b])
    wide_a = builder.zext(builder.bitcast(a, _V64B), _V64I)
    wide_b = builder.sext(builder.bitcast(b, _V64B), _V64I)
    prod = builder.mul(wide_a, wide_b)
    for g in range(4):
        lanes = ir.Constant(_V16I, [4 * r + g for r in range(BLOCK)])
        acc = builder.add(acc, builder.shuffle_vector(prod, ir.Constant(_V64I, None), lanes))
    return acc


@intrinsic
def _dot_block(typingctx, w_blk, blk, limbs, acc):
    """acc[k, r] = sum_c sum_{u<4} byte u of limbs[k, c] (unsigned) x byte u of w_blk[blk, c, r] (signed)
    for k < LIMBS, r < 16: the byte sums of 16 rows with the 3 input bytes.

    w_blk int32 [B, C, 16], blk int64, limbs int32 [LIMBS, >= C] (4 unsigned bytes each), acc int32 [LIMBS, 16].
    """
    ok = (
        _is_c_array(w_blk, types.int32, 3)
        and isinstance(blk, types.Integer)
        and _is_c_array(limbs, types.int32, 2)
        and _is_c_array(acc, types.int32, 2)
    )
    if not ok:
        return None

    def codegen(context, builder, signature, args):
        wa, la, aa = (context.make_array(signature.args[k])(context, builder, args[k]) for k in (0, 2, 3))
        wstride = cgutils.unpack_tuple(builder, wa.strides, 3)[0]
        lstride = cgutils.unpack_tuple(builder, la.strides, 2)[0]
        n_cols = cgutils.unpack_tuple(builder, wa.shape, 3)[1]
        wbase = builder.add(builder.ptrtoint(wa.data, _I64), builder.mul(args[1], wstride))
        lbase = builder.ptrtoint(la.data, _I64)
        c4, c64 = ir.Constant(_I64, 4), ir.Constant(_I64, 4 * BLOCK)
        zero = ir.Constant(_V16I, [0] * BLOCK)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(LIMBS)]
        with cgutils.for_range(builder, n_cols) as loop:
            w_vec = builder.load(
                builder.inttoptr(builder.add(wbase, builder.mul(loop.index, c64)), _V16I.as_pointer()), align=4
            )
            col = builder.mul(loop.index, c4)
            for k in range(LIMBS):
                at = builder.add(builder.add(lbase, builder.mul(ir.Constant(_I64, k), lstride)), col)
                word = builder.load(builder.inttoptr(at, _I32.as_pointer()), align=4)
                one = builder.insert_element(ir.Constant(_V16I, None), word, ir.Constant(_I32, 0))
                splat = builder.shuffle_vector(one, ir.Constant(_V16I, None), ir.Constant(_V16I, [0] * BLOCK))
                builder.store(_dpbusd(builder, builder.load(accs[k]), splat, w_vec), accs[k])
        abase = builder.ptrtoint(aa.data, _I64)
        for k in range(LIMBS):
            at = builder.add(abase, ir.Constant(_I64, 4 * BLOCK * k))
            builder.store(builder.load(accs[k]), builder.inttoptr(at, _V16I.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(w_blk, types.int64, limbs, acc), codegen


def _input_bytes(x, limbs8):
    """Write float32 x [n] as 3 unsigned bytes a column into limbs8 uint8 [LIMBS, >= n] (zeros after n);
    returns (lo, q): x_hat = lo + q * (65536 d0 + 256 d1 + d2)."""
    n = x.shape[0]
    lo = np.float64(x[0])
    hi = lo
    for j in range(n):
        v = np.float64(x[j])
        lo = min(lo, v)
        hi = max(hi, v)
    q = (hi - lo) / _SPAN if hi > lo else 1.0
    for j in range(n):
        d = np.int64(np.rint((np.float64(x[j]) - lo) / q))
        d = min(max(d, 0), 2**24 - 1)
        limbs8[0, j] = (d >> 16) & 255
        limbs8[1, j] = (d >> 8) & 255
        limbs8[2, j] = d & 255
    for j in range(n, limbs8.shape[1]):
        for k in range(LIMBS):
            limbs8[k, j] = 0
    return lo, q


def _int8_vnni_matvec(x, w_blk, rowsum, scale, out, n_chunks):
    """out [T, m] = (x [T, n] @ w^T) * scale [m] for int8 w given as ``row_blocked_int8`` (w_blk, rowsum),
    float32 x, scale, out; one parallel region per token, n_chunks contiguous chunks of 16-row blocks.
    """
    m = out.shape[1]
    n_blocks = w_blk.shape[0]
    limbs = np.zeros((LIMBS, w_blk.shape[1]), dtype=np.int32)  # one token's input bytes, 4 a word
    limbs8 = limbs.view(np.uint8)
    for t in range(x.shape[0]):
        lo, q = _input_bytes_jit(x[t], limbs8)
        for c in numba.prange(n_chunks):
            acc = np.empty((LIMBS, BLOCK), dtype=np.int32)
            for blk in range(c * n_blocks // n_chunks, (c + 1) * n_blocks // n_chunks):
                _dot_block(w_blk, blk, limbs, acc)
                for r in range(BLOCK):
                    i = blk * BLOCK + r
                    if i < m:
                        s = 65536.0 * np.float64(acc[0, r]) + 256.0 * np.float64(acc[1, r]) + np.float64(acc[2, r])
                        out[t, i] = np.float32(scale[i] * (lo * np.float64(rowsum[i]) + q * s))


_input_bytes_jit = numba.njit(cache=True, nogil=True)(_input_bytes)
int8_vnni_matvec = numba.njit(cache=True, parallel=True, nogil=True)(_int8_vnni_matvec)


__all__ = [
    "HEAD_VNNI",
    "MAX_COLUMNS",
    "host_has_vnni",
    "int8_vnni_matvec",
    "row_blocked_int8",
]
