"""Perplexity exactly as GPTQ / OmniQuant / BiLLM / PTQ1.61 compute it.

The token stream is cut into non-overlapping windows of ``seqlen`` tokens (remainder
dropped); each window's loss is the mean cross-entropy of its ``seqlen - 1`` shifted
targets; PPL = exp(mean of the window losses).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError


@dataclass
class PerplexityResult:
    """One dataset's perplexity with everything needed to reproduce it."""

    dataset: str
    ppl: float
    windows: int
    seqlen: int
    tokens: int
    source: str
    note: str
    seconds: float
    tokens_per_s: float
    window_nll: list[float]

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def windows_of(tokens: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of a [1, N] stream: int64 [W, seqlen], remainder dropped."""
    if seqlen < 2:
        raise DataError(f"seqlen must be at least 2, got {seqlen}")
    n = tokens.shape[1] // seqlen
    if n == 0:
        raise DataError(f"the text has {tokens.shape[1]} tokens, fewer than one window of {seqlen}")
    if max_windows is not None:
        n = min(n, max_windows)
    return tokens[0, : n * seqlen].reshape(n, seqlen)


@torch.no_grad()
def window_nll(model: nn.Module, window: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) of one window, int64 [seqlen] -> float."""
    ids = window.unsqueeze(0).to(next(model.parameters()).device)
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, 1:], reduction="mean").item()


def perplexity(
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    seqlen: int = 2048,
    max_windows: int | None = None,
    dataset: str = "",
    source: str = "",
    note: str = "",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on a [1, N] token stream (see module docstring)."""
    max_ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_ctx is not None and seqlen > max_ctx:
        raise DataError(f"seqlen {seqlen} exceeds the model's context of {max_ctx} tokens")
    wins = windows_of(tokens, seqlen, max_windows)
    nlls: list[float] = []
    start = time.perf_counter()
    bar = tqdm(wins, desc=f"ppl {dataset}", unit="win", disable=not progress, leave=False)
    for w in bar:
        nlls.append(window_nll(model, w))
        elapsed = time.perf_counter() - start
        bar.set_postfix(ppl=f"{math.exp(sum(nlls) / len(nlls)):.3f}", tok_s=f"{len(nlls) * seqlen / elapsed:.0f}")
    seconds = time.perf_counter() - start
    return PerplexityResult(
        dataset=dataset,
        ppl=math.exp(sum(nlls) / len(nlls)),
        windows=len(nlls),
        seqlen=seqlen,
        tokens=len(nlls) * seqlen,
        source=source,
        note=note,
        seconds=seconds,
        tokens_per_s=len(nlls) * seqlen / seconds,
        window_nll=nlls,
    )
