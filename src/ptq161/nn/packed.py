"""PackedPTQ161Linear: a linear layer stored as PTQ1.61 parts, whose forward never forms the weight.

Stored buffers (m = out_features, n = in_features, n_s salient and n_b binary columns):
  sal_idx, bin_idx int16 [n_s], [n_b]      — the channel mask as column indices (int32 above 32768)
  sign    uint8 [m, ceil(n_b / 8)]          — sign bits, LSB first
  codes   uint8 [m, ceil(n_s / 2)]          — 4-bit codes, low nibble first
  scale fp16 [m], zero uint8 [m]            — 4-bit quantizer of the salient columns
  a, b fp16 [m], r2 fp16 [n_b]              — W_bin = r2 * (a * sign + b)  (r1 folded into a, b)
Bias: an optional float ``bias`` [m] (Qwen2's q/k/v projections have one).
On CPU the forward runs the table-lookup kernels of ``ptq161.primitives.kernels`` for up to
LUT_MAX_TOKENS tokens (decode), and for more tokens (prefill, perplexity) the nibble-table
kernel on AVX-512 CPUs or BLAS over rebuilt row tiles elsewhere; on other devices (GPU) it
rebuilds the weight with the same pure functions the quantizer used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from ..errors import PTQ161Error
from ..primitives.bits import unpack_bits, unpack_nibbles
from ..primitives.kernels import (
    PERMUTE_SIGNS,
    SIGN_PATTERNS,
    KernelBuffers,
    dequantize_rows_grouped,
    kernel_threads,
    packed_matmul,
    packed_matvec,
    padded_codes,
    row_blocked,
)
from ..primitives.quant import assemble, binary_dequantize, rtn_dequantize
from .lowbit import LUT_MAX_TOKENS, apply_keeping_stored_dtypes, lowbit_forward

ROW_TILE = 256  # weight rows rebuilt at a time on the BLAS path (at least) ...
TILE_FLOATS = 1 << 21  # ... or as many as fit 8 MiB of float32: a small layer is one tile, one BLAS call
PACKED_BUFFERS = ("sal_idx", "bin_idx", "sign", "codes", "scale", "zero", "a", "b", "r2")
FACTORS = ("scale", "a", "b", "r2")  # stored fp16 whatever the model's dtype


@dataclass(frozen=True)
class PTQ161Parts:
    """What PTQ1.61 stores of one linear (m rows, n columns, n_s salient, n_b = n - n_s binary): the record the
    quantizer produces, the end-to-end stage trains and ``PackedPTQ161Linear`` packs. Outside the method it
    travels as ``as_dict()`` (the generic ``Parts`` of every method: saved state, parts files)."""

    mask: torch.Tensor  # bool [n]: the salient columns
    sign: torch.Tensor  # uint8 [m, ceil(n_b / 8)]: sign bits of the binary columns, LSB first
    codes: torch.Tensor  # uint8 [m, ceil(n_s / 2)]: 4-bit codes, low nibble first (other widths: [m, n_s])
    scale: torch.Tensor  # fp16 [m]: 4-bit dequantization (code - zero) * scale
    zero: torch.Tensor  # uint8 [m]
    a: torch.Tensor  # fp16 [m]: W_bin = r2 * (a * sign + b), r1 folded in
    b: torch.Tensor  # fp16 [m]
    r2: torch.Tensor  # fp16 [n_b]

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The fields by name (the tensors themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> PTQ161Parts:
        """From ``as_dict`` output; a missing or unknown field is a ``PTQ161Error``."""
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise PTQ161Error(f"PTQ1.61 parts need {sorted(names)}, got {sorted(d)}")
        return cls(**d)

    @property
    def n_salient(self) -> int:
        return int(self.mask.sum())


class PackedPTQ161Linear(nn.Module):
    """Drop-in replacement for ``nn.Linear`` holding packed PTQ1.61 weights and an optional bias."""

    def __init__(self, in_features: int, out_features: int, n_salient: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.n_salient = in_features, out_features, n_salient
        m, n_s, n_b = out_features, n_salient, in_features - n_salient
        idx_dtype = torch.int16 if in_features <= 2**15 else torch.int32  # column indices: 16 bits a column
        self.register_buffer("sal_idx", torch.zeros(n_s, dtype=idx_dtype))
        self.register_buffer("bin_idx", torch.zeros(n_b, dtype=idx_dtype))
        self.register_buffer("sign", torch.zeros(m, math.ceil(n_b / 8), dtype=torch.uint8))
        self.register_buffer("codes", torch.zeros(m, math.ceil(n_s / 2), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(m, dtype=torch.float16))
        self.register_buffer("zero", torch.zeros(m, dtype=torch.uint8))
        self.register_buffer("a", torch.zeros(m, dtype=torch.float16))
        self.register_buffer("b", torch.zeros(m, dtype=torch.float16))
        self.register_buffer("r2", torch.ones(n_b, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(m)) if bias else None
        self._cpu_cache: dict[bool, KernelBuffers] | None = None
        self._order: torch.Tensor | None = None

    @classmethod
    def from_parts(
        cls, parts: PTQ161Parts | dict[str, torch.Tensor], bias: torch.Tensor | None = None
    ) -> PackedPTQ161Linear:
        """Build from PTQ1.61 parts (4-bit codes; the record or its ``as_dict()``) and an optional bias [m]."""
        if not isinstance(parts, PTQ161Parts):
            parts = PTQ161Parts.from_dict(parts)
        mask = parts.mask.bool()
        n, n_s, m = mask.numel(), int(mask.sum()), parts.a.numel()
        mod = cls(n, m, n_s, bias=bias is not None)
        mod.sal_idx.copy_(torch.nonzero(mask)[:, 0])
        mod.bin_idx.copy_(torch.nonzero(~mask)[:, 0])
        for k in ("sign", "codes", "scale", "zero", "a", "b", "r2"):
            getattr(mod, k).copy_(getattr(parts, k))
        if bias is not None:
            mod.bias.data.copy_(bias)
        return mod

    def validate(self, name: str) -> None:
        """Check the loaded buffers before any kernel reads them; ``PTQ161Error`` naming layer ``name``.

        The column indices must be sorted, unique, inside [0, n) and together cover every column
        (the kernels index the input with them without bounds checks); zero points must be 4-bit
        codes; the fp16 factors and the bias must be finite. Shapes and dtypes are the module's own.
        """
        n = self.in_features
        sal, binary = self.sal_idx.long(), self.bin_idx.long()
        for key, idx in (("sal_idx", sal), ("bin_idx", binary)):
            if idx.numel() and (idx.min() < 0 or idx.max() >= n):
                bad = idx[(idx < 0) | (idx >= n)][0].item()
                raise PTQ161Error(f"packed layer '{name}': {key} holds {bad}, outside 0..{n - 1} (damaged file?)")
            if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
                raise PTQ161Error(f"packed layer '{name}': {key} is not sorted and unique (damaged file?)")
        covered = torch.zeros(n, dtype=torch.bool, device=sal.device)
        covered[sal], covered[binary] = True, True
        if not bool(covered.all()):
            raise PTQ161Error(f"packed layer '{name}': sal_idx and bin_idx overlap (damaged file?)")
        if self.zero.numel() and int(self.zero.max()) > 15:
            raise PTQ161Error(
                f"packed layer '{name}': a zero point is {int(self.zero.max())}, above 15 (damaged file?)"
            )
        for key in (*FACTORS, "bias"):
            t = getattr(self, key)
            if t is not None and not bool(torch.isfinite(t).all()):
                raise PTQ161Error(f"packed layer '{name}': {key} holds NaN or infinite values (damaged file?)")

    def mask(self) -> torch.Tensor:
        """The salient-channel mask, bool [n]."""
        mask = torch.zeros(self.in_features, dtype=torch.bool, device=self.sal_idx.device)
        mask[self.sal_idx.long()] = True
        return mask

    def dequantize(self, rows: slice = slice(None)) -> torch.Tensor:
        """Rows of the weight, float32 [rows, n], exactly as the quantizer evaluated them."""
        n_s, n_b = self.n_salient, self.in_features - self.n_salient
        w_sal = rtn_dequantize(unpack_nibbles(self.codes[rows], n_s), self.scale[rows], self.zero[rows])
        w_bin = binary_dequantize(unpack_bits(self.sign[rows], n_b), self.a[rows], self.b[rows], self.r2)
        return assemble(self.mask(), w_sal, w_bin)

    def dense_rows(self, rows: slice) -> torch.Tensor:
        """``dequantize(rows)``, on the CPU by the numba kernel of ``grouped_rows`` (same bits) with the
        columns put back in place; float32 [rows, n]."""
        if self.sign.device.type != "cpu" or rows.step not in (None, 1):
            return self.dequantize(rows)
        grouped = self.grouped_rows(rows)
        out = torch.empty_like(grouped)
        out[:, self.column_order()] = grouped
        return out

    def column_order(self) -> torch.Tensor:
        """int64 [n]: sal_idx followed by bin_idx, the column order of ``grouped_rows`` (cached)."""
        if self._order is None:
            self._order = torch.cat([self.sal_idx, self.bin_idx]).long()
        return self._order

    def grouped_rows(self, rows: slice) -> torch.Tensor:
        """``dense_rows(rows)[:, column_order()]``, built without scattered writes (CPU); float32 [rows, n].

        The prefill path's tiles: ``x[..., column_order()] @ grouped_rows(r)^T`` equals
        ``x @ dense_rows(r)^T`` up to float32 summation order."""
        lo, hi, _ = rows.indices(self.out_features)
        out = np.empty((max(hi - lo, 0), self.in_features), dtype=np.float32)
        if hi > lo:
            w = self.kernel_buffers()  # codes padded or not
            dequantize_rows_grouped(
                lo, hi, self.n_salient, w.r2, w.sign, w.codes, w.a, w.b, w.scale, w.zero, SIGN_PATTERNS, out
            )
        return torch.from_numpy(out)

    def kernel_buffers(self, permute: bool = PERMUTE_SIGNS) -> KernelBuffers:
        """Numpy views of the buffers for the CPU kernels, float32 factors (made once per kernel, cached).

        For the byte-table kernel the code rows are copied padded with zero bytes to P' (a multiple
        of 32) for its vectorized loop, and sign_t, codes_t are empty. With ``permute`` (the
        nibble-table kernel) codes is the stored [m, P] and the sign and code bytes are copied
        row-blocked (``row_blocked``): about the packed linear's size again in memory, not on disk.
        """
        if self._cpu_cache is None:
            self._cpu_cache = {}
        if permute not in self._cpu_cache:
            sign, codes = self.sign.numpy(), self.codes.numpy()
            a, b, scale, zero = (t.float().numpy() for t in (self.a, self.b, self.scale, self.zero))
            if permute:
                sign_t, codes_t = row_blocked(sign), row_blocked(codes)
            else:
                sign_t = np.zeros((0, sign.shape[1], 16), np.uint8)
                codes_t = np.zeros((0, codes.shape[1], 16), np.uint8)
                codes = padded_codes(codes)
            self._cpu_cache[permute] = KernelBuffers(
                self.sal_idx.numpy(), self.bin_idx.numpy(), self.r2.float().numpy(), sign, codes,
                a, b, scale, zero, sign_t, codes_t,
            )  # fmt: skip
        return self._cpu_cache[permute]

    def _apply(self, fn, recurse: bool = True):
        self._cpu_cache, self._order = None, None
        return apply_keeping_stored_dtypes(self, lambda: super(PackedPTQ161Linear, self)._apply(fn, recurse), FACTORS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cpu = self.sign.device.type == "cpu"  # CPU tiles come with their columns grouped (see grouped_rows)
        tokens = x.numel() // max(self.in_features, 1)
        if cpu and PERMUTE_SIGNS and tokens > LUT_MAX_TOKENS and not (torch.is_grad_enabled() and x.requires_grad):
            # many tokens on an AVX-512 CPU: the nibble-table kernel, 4 tokens x 64 rows a pass (no weight rebuilt)
            flat = x.reshape(-1, self.in_features).float().contiguous().numpy()
            out = np.empty((tokens, self.out_features), dtype=np.float32)
            packed_matmul(flat, self.kernel_buffers(True), out, kernel_threads())
            y = torch.from_numpy(out).reshape(*x.shape[:-1], self.out_features).to(x.dtype)
            return y if self.bias is None else y + self.bias.to(y.dtype)
        y = lowbit_forward(
            x,
            self.out_features,
            self.grouped_rows if cpu else self.dequantize,
            lambda flat, out: packed_matvec(flat, self.kernel_buffers(), out, kernel_threads(), PERMUTE_SIGNS),
            max(ROW_TILE, TILE_FLOATS // max(self.in_features, 1)),
            columns=self.column_order() if cpu else None,
        )
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_salient={self.n_salient}"


def validate_lowbit_modules(model: nn.Module, prefix: str = "") -> int:
    """``validate`` every packed, int8 and int4 module of ``model`` (names ``prefix + path``); returns how many."""
    count = 0
    for path, mod in model.named_modules():
        if hasattr(mod, "validate"):
            mod.validate(prefix + path)
            count += 1
    return count


__all__ = ["LUT_MAX_TOKENS", "PACKED_BUFFERS", "PTQ161Parts", "PackedPTQ161Linear", "validate_lowbit_modules"]
