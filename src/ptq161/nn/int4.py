"""4-bit grouped (asymmetric) lm_head and embedding modules for packed artifacts.

Each row of W [m, n] is cut into groups of ``g`` consecutive columns (g divides n); each
group stores 4-bit codes q in 0..15 and two fp16 factors, a scale s and an offset o:

    W[i, k g + t] ~= s[i, k] * q[i, k g + t] + o[i, k]

codes uint8 [m, n / 2] (two codes per byte, the even column in the low nibble), scale and
offset fp16 [m, n / g]. With g = 64 that is 4.5 bits per weight (llama.cpp's Q4_1 layout
with larger groups). Decode-sized calls use the numba int4 GEMV; larger calls rebuild row
tiles and use BLAS.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import PTQ161Error
from ..primitives.bits import pack_nibbles, unpack_nibbles
from ..primitives.kernels import int4_matvec
from .lowbit import apply_keeping_stored_dtypes, lowbit_forward, reshare_after_apply

ROW_TILE = 4096
GROUP_SIZES = (64, 32)  # the first that divides the row length is used
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8)  # shrinkages of a group's range tried by the quantizer


def int4_group_size(n: int) -> int:
    """The group size for rows of length ``n``: the first of ``GROUP_SIZES`` that divides it."""
    for g in GROUP_SIZES:
        if n % g == 0:
            return g
    raise PTQ161Error(f"a 4-bit head needs a hidden size that is a multiple of {GROUP_SIZES[-1]}, not {n}")


def _quantize_groups(w: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [r, G, g] float32 -> (codes float [r, G, g] in 0..15, scale fp16 [r, G], offset fp16 [r, G])
    for the range [ratio * min, ratio * max] of each group (the range always holds 0)."""
    lo = (w.amin(dim=-1).clamp(max=0) * ratio).half()
    hi = (w.amax(dim=-1).clamp(min=0) * ratio).half()
    scale = ((hi.float() - lo.float()) / 15).clamp(min=1e-8).half()
    q = torch.clamp(torch.round((w - lo.float()[..., None]) / scale.float()[..., None]), 0, 15)
    return q, scale, lo


def quantize_int4_groups(
    w: torch.Tensor, group: int, rows: int = ROW_TILE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped asymmetric 4-bit: w [m, n] -> (codes uint8 [m, n / 2], scale fp16 [m, n / group],
    offset fp16 [m, n / group]).

    Per group, the range [min, max] (widened to hold 0) is shrunk by each of ``CLIP_RATIOS``
    and the one with the smallest squared error is kept (round to nearest within it). Done
    ``rows`` rows at a time, so the float temporaries stay small for a large vocabulary.
    """
    m, n = w.shape
    if n % group or group % 2:
        raise PTQ161Error(f"4-bit groups of {group} do not divide rows of {n}")
    codes = torch.empty(m, n // 2, dtype=torch.uint8)
    scale = torch.empty(m, n // group, dtype=torch.float16)
    offset = torch.empty(m, n // group, dtype=torch.float16)
    for r in range(0, m, rows):
        part = w[r : r + rows].float().reshape(-1, n // group, group)
        best = None
        for ratio in CLIP_RATIOS:
            q, s, o = _quantize_groups(part, ratio)
            err = (q * s.float()[..., None] + o.float()[..., None] - part).square().sum(dim=-1)
            if best is None:
                best = [q, s, o, err]
                continue
            better = err < best[3]
            best[0] = torch.where(better[..., None], q, best[0])
            best[1] = torch.where(better, s, best[1])
            best[2] = torch.where(better, o, best[2])
            best[3] = torch.minimum(err, best[3])
        q = best[0].reshape(-1, n).to(torch.uint8)
        codes[r : r + rows] = pack_nibbles(q)
        scale[r : r + rows], offset[r : r + rows] = best[1], best[2]
    return codes, scale, offset


def dequantize_int4_groups(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """codes uint8 [..., n / 2], scale and offset fp16 [..., n / g] -> float32 weights [..., n]."""
    half = codes.shape[-1]
    q = unpack_nibbles(codes.reshape(-1, half), 2 * half).reshape(*codes.shape[:-1], -1).float()
    groups = scale.shape[-1]
    q = q.reshape(*codes.shape[:-1], groups, -1)
    w = q * scale.float()[..., None] + offset.float()[..., None]
    return w.reshape(*codes.shape[:-1], -1)


class _Int4Groups(nn.Module):
    """What both int4 modules share: ``codes`` uint8 [m, n / 2], fp16 ``scale`` and ``offset`` [m, n / g]."""

    STORED = ("codes", "scale", "offset")  # the stored tensors (a tied head shares them with the embedding)
    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor

    def _buffers_for(self, m: int, n: int, group: int) -> None:
        if n % group or group % 2:
            raise PTQ161Error(f"4-bit groups of {group} do not divide rows of {n}")
        self.group_size = group
        self.register_buffer("codes", torch.zeros(m, n // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(m, n // group, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(m, n // group, dtype=torch.float16))

    def _fill(self, w: torch.Tensor) -> None:
        codes, scale, offset = quantize_int4_groups(w.detach().cpu(), self.group_size)
        self.codes.copy_(codes)
        self.scale.copy_(scale)
        self.offset.copy_(offset)

    def validate(self, name: str) -> None:
        """``PTQ161Error`` naming module ``name`` when a scale is NaN, infinite or negative or an offset is
        not finite (damaged file)."""
        ok = torch.isfinite(self.scale) & (self.scale >= 0) & torch.isfinite(self.offset)
        if not bool(ok.all()):
            raise PTQ161Error(
                f"int4 module '{name}': scale or offset holds NaN, infinite or negative values (damaged file?)"
            )

    def _apply(self, fn, recurse: bool = True):
        self._factors_f32 = None
        apply = lambda: super(_Int4Groups, self)._apply(fn, recurse)  # noqa: E731
        out = apply_keeping_stored_dtypes(self, apply, ("scale", "offset"))
        reshare_after_apply(self)
        return out


class Int4Linear(_Int4Groups):
    """A bias-free linear with grouped 4-bit weights (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._buffers_for(out_features, in_features, group_size)
        self._factors_f32: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_weight(cls, w: torch.Tensor, group_size: int | None = None) -> Int4Linear:
        """Quantize a float weight [m, n] (groups of ``group_size``, default ``int4_group_size(n)``)."""
        mod = cls(w.shape[1], w.shape[0], group_size or int4_group_size(w.shape[1]))
        mod._fill(w)
        return mod

    def dequantize(self, rows: slice = slice(None)) -> torch.Tensor:
        """Float32 rows of the weight [rows, n]."""
        return dequantize_int4_groups(self.codes[rows], self.scale[rows], self.offset[rows])

    def _kernel(self, flat: np.ndarray, out: np.ndarray) -> None:
        """The CPU kernel (``lowbit_forward`` calls it only for CPU tensors): out [T, m] = flat [T, n] W^T."""
        if self._factors_f32 is None:  # float32 copies of the factors for the kernel, made once
            self._factors_f32 = (self.scale.float().numpy(), self.offset.float().numpy())
        int4_matvec(flat, self.codes.numpy(), *self._factors_f32, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lowbit_forward(x, self.out_features, self.dequantize, self._kernel, ROW_TILE)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group_size={self.group_size}"


class Int4Embedding(_Int4Groups):
    """An embedding table stored as grouped 4-bit rows (see the module docstring)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, group_size: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self._buffers_for(num_embeddings, embedding_dim, group_size)
        # empty, not saved: the dtype the embedding returns (the model's; see Int8Embedding)
        self.register_buffer("out_dtype", torch.empty(0), persistent=False)

    @classmethod
    def from_weight(cls, w: torch.Tensor, group_size: int | None = None) -> Int4Embedding:
        """Quantize a float table [V, d]; the module returns rows in ``w``'s dtype."""
        mod = cls(*w.shape, group_size or int4_group_size(w.shape[1]))
        mod._fill(w)
        mod.out_dtype = torch.empty(0, dtype=w.dtype, device=w.device)
        return mod

    def dequantize(self) -> torch.Tensor:
        """The float32 table [V, d]."""
        return dequantize_int4_groups(self.codes, self.scale, self.offset)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = dequantize_int4_groups(self.codes[ids], self.scale[ids], self.offset[ids])
        return rows.to(self.out_dtype.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, group_size={self.group_size}"
