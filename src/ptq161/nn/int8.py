"""8-bit (per-row symmetric) lm_head and embedding modules for packed artifacts.

weight int8 [m, n], scale fp16 [m]; W ~= scale[:, None] * weight. Decode-sized calls use a
numba kernel: on CPUs with AVX-512 VNNI exact byte products over a row-blocked copy of the
weights (``ptq161.primitives.vnni``, the input as 24-bit fixed point), elsewhere a float GEMV;
larger calls rebuild row tiles and use BLAS.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import PTQ161Error
from ..primitives.kernels import int8_matvec, kernel_threads
from ..primitives.vnni import HEAD_VNNI, MAX_COLUMNS, int8_vnni_matvec, row_blocked_int8
from .lowbit import apply_keeping_stored_dtypes, lowbit_forward, reshare_after_apply

ROW_TILE = 4096


def quantize_int8_rows(w: torch.Tensor, rows: int = ROW_TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: w [m, n] -> (int8 [m, n], fp16 scale [m]), scale = max|w_i| / 127.

    Done ``rows`` rows at a time, so the float temporaries stay small for a large vocabulary.
    """
    scale = torch.empty(w.shape[0], dtype=torch.float16)
    q = torch.empty(w.shape, dtype=torch.int8)
    for r in range(0, w.shape[0], rows):
        part = w[r : r + rows].float()
        s = (part.abs().amax(dim=1) / 127).clamp(min=1e-8).half()
        scale[r : r + rows] = s
        q[r : r + rows] = torch.clamp(torch.round(part / s.float()[:, None]), -127, 127).to(torch.int8)
    return q, scale


def _fill(mod: nn.Module, w: torch.Tensor) -> nn.Module:
    """Quantize ``w`` into the ``weight_int8`` and ``scale`` buffers of ``mod``."""
    q, s = quantize_int8_rows(w.detach().cpu())
    mod.weight_int8.copy_(q)
    mod.scale.copy_(s)
    return mod


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place version counter; -1 for an inference-mode tensor, which has none."""
    try:
        return t._version
    except RuntimeError:
        return -1


class _Int8Rows(nn.Module):
    """What both int8 modules share: per-row fp16 ``scale`` [m] beside ``weight_int8`` [m, n]."""

    STORED = ("weight_int8", "scale")  # the stored tensors (a tied head shares them with the embedding)
    scale: torch.Tensor

    def validate(self, name: str) -> None:
        """``PTQ161Error`` naming module ``name`` when a scale is NaN, infinite or negative (damaged file)."""
        if not bool((torch.isfinite(self.scale) & (self.scale >= 0)).all()):
            raise PTQ161Error(f"int8 module '{name}': scale holds NaN, infinite or negative values (damaged file?)")


class Int8Linear(_Int8Rows):
    """A bias-free linear with int8 weights and per-row fp16 scales."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float16))
        self._scale_f32: np.ndarray | None = None
        self._blocked: tuple[np.ndarray, np.ndarray] | None = None
        self._key: tuple[int, ...] | None = None

    @classmethod
    def from_weight(cls, w: torch.Tensor) -> Int8Linear:
        """Quantize a float weight [m, n]."""
        return _fill(cls(w.shape[1], w.shape[0]), w)

    def dequantize(self, rows: slice = slice(None)) -> torch.Tensor:
        """Float32 rows of the weight."""
        return self.weight_int8[rows].float() * self.scale[rows].float()[:, None]

    def _kernel(self, flat: np.ndarray, out: np.ndarray, vnni: bool = HEAD_VNNI) -> None:
        """The CPU kernel (``lowbit_forward`` calls it only for CPU tensors): out [T, m] = flat [T, n] W^T.

        With ``vnni`` (default: the CPU has AVX-512 VNNI) exact byte products over a row-blocked
        copy of the weights made on first use (as much memory again as ``weight_int8``, not on disk)."""
        # copies for the kernels, made once and made again when the buffers change in place
        key = tuple(v for t in (self.weight_int8, self.scale) for v in (_version(t), t.data_ptr()))
        if self._key != key:
            self._scale_f32, self._blocked, self._key = self.scale.float().numpy(), None, key
        if vnni and self.in_features <= MAX_COLUMNS:
            if self._blocked is None:
                self._blocked = row_blocked_int8(self.weight_int8.numpy())
            int8_vnni_matvec(flat, *self._blocked, self._scale_f32, out, kernel_threads())
        else:
            int8_matvec(flat, self.weight_int8.numpy(), self._scale_f32, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lowbit_forward(x, self.out_features, self.dequantize, self._kernel, ROW_TILE)

    def _apply(self, fn, recurse: bool = True):
        self._scale_f32, self._blocked, self._key = None, None, None
        out = apply_keeping_stored_dtypes(self, lambda: super(Int8Linear, self)._apply(fn, recurse), ("scale",))
        reshare_after_apply(self)
        return out


class Int8Embedding(_Int8Rows):
    """An embedding table stored as int8 rows with fp16 scales."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings, dtype=torch.float16))
        # empty, not saved: its dtype is the model's (set at construction, followed by .to(dtype)),
        # the dtype the embedding returns
        self.register_buffer("out_dtype", torch.empty(0), persistent=False)

    @classmethod
    def from_weight(cls, w: torch.Tensor) -> Int8Embedding:
        """Quantize a float table [V, d]; the module returns rows in ``w``'s dtype."""
        mod = _fill(cls(*w.shape), w)
        mod.out_dtype = torch.empty(0, dtype=w.dtype, device=w.device)
        return mod

    def _apply(self, fn, recurse: bool = True):
        return apply_keeping_stored_dtypes(self, lambda: super(Int8Embedding, self)._apply(fn, recurse), ("scale",))

    def dequantize(self) -> torch.Tensor:
        """The float32 table [V, d]."""
        return self.weight_int8.float() * self.scale.float()[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight_int8[ids].float() * self.scale[ids].float()[..., None]
        return rows.to(self.out_dtype.dtype)

    def row(self, token: int) -> np.ndarray:
        """Row ``token`` as float32 [d] by numpy on the CPU (no torch call): ``forward``'s float32 values,
        int8 widened times the fp16 scale widened, one float32 product each (a fresh array)."""
        return self.weight_int8.numpy()[token].astype(np.float32) * np.float32(self.scale.numpy()[token])
