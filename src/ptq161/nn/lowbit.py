"""What the low-bit modules share: the forward (a CPU kernel for decode-sized calls, row tiles otherwise),
dtype casts that keep the stored factors, and a tied head's tensors shared with the embedding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import PTQ161Error

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


def share_buffers(module: nn.Module, source: nn.Module, names: tuple[str, ...]) -> None:
    """Make the buffers ``names`` of ``module`` the very tensors of ``source`` (a tied lm_head reading the
    compact embedding's rows: one copy in memory; non-persistent, so a checkpoint stores them once, under
    ``source``). Shapes and dtypes must agree (same format and group size), else a ``PTQ161Error``."""
    for name in names:
        mine, theirs = module._buffers[name], source._buffers[name]
        if mine is None or theirs is None or mine.shape != theirs.shape or mine.dtype != theirs.dtype:
            raise PTQ161Error(
                f"cannot tie the head to the embedding: '{name}' differs "
                f"({None if mine is None else tuple(mine.shape)} vs {None if theirs is None else tuple(theirs.shape)})"
            )
        module.register_buffer(name, theirs, persistent=False)
    module.__dict__["_shares"] = (source, names)  # not a submodule: the embedding stays where it is


def shared_source(module: nn.Module) -> nn.Module | None:
    """The module whose tensors ``module`` reads (``share_buffers``), or None."""
    shares = module.__dict__.get("_shares")
    return shares[0] if shares else None


def reshare_after_apply(module: nn.Module) -> None:
    """After ``module._apply`` (``.to``, ``.half()``): point a tied module's buffers at its source's again
    when both sit on one device with the same dtypes (the source converted first, as a model visits its
    embedding before its lm_head); otherwise the converted copies stay (same values, two copies)."""
    shares = module.__dict__.get("_shares")
    if not shares:
        return
    source, names = shares
    for name in names:
        mine, theirs = module._buffers[name], source._buffers[name]
        if theirs is None or mine is None or (mine.device, mine.dtype, mine.shape) != (theirs.device, theirs.dtype,
                                                                                      theirs.shape):  # fmt: skip
            return
    for name in names:
        module._buffers[name] = source._buffers[name]


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
