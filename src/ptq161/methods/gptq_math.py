"""GPTQ core (Frantar et al. 2023) in the paper's notation, as pure functions.

W [m, n], H [n, n]. Columns are processed in blocks of ``blocksize``; ``quantize_column``
maps column i (and its index) to its quantized value; the error is spread over the
remaining columns through the upper Cholesky factor of H^-1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def prepare_hessian(w: torch.Tensor, h: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead columns get H_jj = 1 and W[:, j] = 0; add damp * mean(diag H); return (W, Hinv).

    Hinv is the upper Cholesky factor of H^-1, float32 [n, n].
    """
    w, h = w.clone().float(), h.clone().float()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    l_chol = torch.linalg.cholesky(h.double())
    hinv = torch.cholesky_inverse(l_chol)
    hinv = torch.linalg.cholesky(hinv, upper=True)
    return w, hinv.float()


def gptq_quantize(
    w: torch.Tensor,
    hinv: torch.Tensor,
    quantize_column: Callable[[torch.Tensor, int], torch.Tensor],
    blocksize: int = 128,
    on_block: Callable[[torch.Tensor, int], None] | None = None,
) -> torch.Tensor:
    """Quantize W [m, n] column by column with GPTQ error feedback; returns Q [m, n] float32.

    ``on_block(W_block, start)`` is called with each block's (already compensated) weights
    before its columns are quantized, e.g. to fit per-group quantizer parameters.
    """
    w = w.clone()
    n = w.shape[1]
    q = torch.zeros_like(w)
    for i1 in range(0, n, blocksize):
        i2 = min(i1 + blocksize, n)
        w1 = w[:, i1:i2].clone()
        if on_block is not None:
            on_block(w1, i1)
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            d = h1[i, i]
            qcol = quantize_column(col, i1 + i)
            q[:, i1 + i] = qcol
            e = (col - qcol) / d
            w1[:, i:] -= e[:, None] @ h1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q


def blockwise_compensate(
    w: torch.Tensor,
    hinv: torch.Tensor,
    quantize_block: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    blocksize: int = 128,
) -> torch.Tensor:
    """Quantize whole column blocks at once, compensating only between blocks (BiLLM).

    quantize_block(W_block [m, b], Hinv_block [b, b], start) -> Q_block [m, b]. Returns Q [m, n].
    """
    w = w.clone()
    q = torch.zeros_like(w)
    for i1 in range(0, w.shape[1], blocksize):
        i2 = min(i1 + blocksize, w.shape[1])
        h1 = hinv[i1:i2, i1:i2]
        q1 = quantize_block(w[:, i1:i2], h1, i1)
        q[:, i1:i2] = q1
        err1 = (w[:, i1:i2] - q1) / torch.diag(h1)[None, :]
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q
