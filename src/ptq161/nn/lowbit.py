"""The forward shared by the low-bit linears: a CPU kernel for decode-sized calls, row tiles otherwise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

LUT_MAX_TOKENS = 8  # up to this many tokens per call: the CPU kernel (decode); above: row tiles + BLAS


def apply_keeping_stored_dtypes(module: nn.Module, apply: Callable[[], Any], names: tuple[str, ...]) -> Any:
    """Run ``apply()`` (the module's ``nn.Module._apply``) but keep the dtype of the stored buffers ``names``.

    A dtype cast of the model (``model.half()``, ``.to(torch.bfloat16)``) would otherwise round the
    stored fp16 factors (to bfloat16: 8 bits of mantissa instead of 11); only their device follows.
    """
    before = {k: module._buffers[k] for k in names}
    out = apply()
    for k, old in before.items():
        new = module._buffers[k]
        if new is not None and old is not None and new.dtype != old.dtype:
            module._buffers[k] = old.to(new.device)
    return out


def lowbit_forward(
    x: torch.Tensor,
    out_features: int,
    dequantize_rows: Callable[[slice], torch.Tensor],
    kernel: Callable[[np.ndarray, np.ndarray], None],
    row_tile: int,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x W^T for x [..., n] without forming the whole weight -> [..., out_features].

    Few tokens on the CPU without autograd: ``kernel(x2d float32 [T, n], out float32 [T, m])``.
    Otherwise (prefill, perplexity, GPU, training): BLAS over rows rebuilt by
    ``dequantize_rows(slice)``, so at most ``row_tile`` rows of the weight exist at a time.
    ``columns`` (int64 [n], optional): the order of the columns of those rows; x's columns are
    gathered in that order once.
    """
    n = x.shape[-1]
    tokens = x.numel() // n
    if x.device.type != "cpu" or tokens > LUT_MAX_TOKENS or (torch.is_grad_enabled() and x.requires_grad):
        xs = x if columns is None else x.index_select(-1, columns.to(x.device))
        tiles = [
            nn.functional.linear(xs, dequantize_rows(slice(r, r + row_tile)).to(x.dtype))
            for r in range(0, out_features, row_tile)
        ]
        return tiles[0] if len(tiles) == 1 else torch.cat(tiles, dim=-1)
    flat = x.reshape(-1, n).float().contiguous().numpy()
    out = np.empty((flat.shape[0], out_features), dtype=np.float32)
    kernel(flat, out)
    return torch.from_numpy(out).reshape(*x.shape[:-1], out_features).to(x.dtype)
