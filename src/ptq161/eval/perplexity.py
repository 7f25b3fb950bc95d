"""Perplexity exactly as GPTQ / OmniQuant / BiLLM / PTQ1.61 compute it.

The token stream is cut into non-overlapping windows of ``seqlen`` tokens (remainder
dropped); each window's loss is the mean cross-entropy of its ``seqlen - 1`` shifted
targets; PPL = exp(mean of the window losses).

Two loops compute it: the model's own forward window by window, and, for a model larger than
the memory budget (``ptq161.models.lazy.LazyModel``), the GPTQ papers' block-wise loop: every
window enters decoder layer 0, then layer 1, ..., each layer loaded once per group of windows.
With a large vocabulary the lm_head runs on chunks of tokens so that the [seqlen, vocab] logits
never exist at once (the same numbers up to float summation order).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..calibration import capture_block_inputs, run_block
from ..errors import DataError, check_finite
from ..models.adapters import LLAMA_LIKE, Adapter, get_adapter
from ..models.architecture import logits_transform
from ..models.lazy import HEAD_CHUNK, LARGE_LOGITS, LazyModel
from ..parallel import World

LAZY_GROUP = 8  # windows that go through the layers together in the block-wise loop


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


def exp_or_inf(x: float) -> float:
    """exp(x), or inf where it overflows a float (a finite but huge mean loss)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


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


def head_nll(
    head: nn.Module,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    chunk: int = HEAD_CHUNK,
    post: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Mean next-token cross-entropy of one window from its final hidden states, chunk by chunk.

    hidden: [seqlen, d] after the final norm; ids: int64 [seqlen]. Equals the cross-entropy of
    ``post(head(hidden))[:-1]`` against ``ids[1:]`` without the [seqlen, vocab] logits at once;
    ``post``: what the model's forward does to its logits (``models.architecture.logits_transform``).
    """
    total = 0.0
    n = hidden.shape[0] - 1
    for c in range(0, n, chunk):
        logits = head(hidden[c : min(c + chunk, n)])
        logits = (post(logits) if post is not None else logits).float()
        total += F.cross_entropy(logits, ids[c + 1 : min(c + chunk, n) + 1], reduction="sum").item()
    return total / n


def _chunked_head_adapter(model: nn.Module, seqlen: int) -> Adapter | None:
    """The model's adapter when the logits of a window are large enough to chunk the head (LLaMA-layout
    models only), else None."""
    try:
        adapter = get_adapter(model)
    except Exception:
        return None
    vocab = getattr(model.config, "vocab_size", 0)
    large = seqlen * vocab * 4 > LARGE_LOGITS
    return adapter if large and adapter.linear_groups == LLAMA_LIKE.linear_groups else None


@torch.no_grad()
def window_nll(model: nn.Module, window: torch.Tensor) -> float:
    """Mean next-token cross-entropy (nats) of one window, int64 [seqlen] -> float."""
    ids = window.unsqueeze(0).to(next(model.parameters()).device)
    adapter = _chunked_head_adapter(model, ids.shape[1])
    if adapter is not None:
        base = model.get_submodule(adapter.layers.rsplit(".", 1)[0])  # the decoder stack, final norm included
        hidden = base(input_ids=ids, use_cache=False).last_hidden_state[0]
        return head_nll(model.get_submodule(adapter.lm_head), hidden, ids[0], post=logits_transform(model.config))
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return F.cross_entropy(logits, ids[0, 1:], reduction="mean").item()


@torch.no_grad()
def blockwise_nlls(lazy: LazyModel, wins: torch.Tensor, progress: bool = False, group: int = LAZY_GROUP) -> list[float]:
    """Window losses of a block-onloaded model: each group of windows [g, seqlen] goes through layer 0,
    then layer 1, ... (each loaded from disk and released), then the final norm and the chunked head."""
    model, adapter = lazy.model, lazy.adapter
    norm = model.get_submodule(adapter.final_norm)
    post = logits_transform(model.config)
    nlls: list[float] = []
    bar = tqdm(total=wins.shape[0] * lazy.num_blocks, desc="ppl blocks", unit="win-block", disable=not progress)
    with bar:  # closed (its line ended) also when an error stops the loop
        for g in range(0, wins.shape[0], group):
            ids = wins[g : g + group].to(lazy.device)
            lazy.load_module(adapter.embed)  # the embedding and the head are never in memory together
            x, calls = capture_block_inputs(model, adapter, ids)
            lazy.release_module(adapter.embed)
            for i in range(lazy.num_blocks):
                x = run_block(lazy.load_block(i), x, calls[i])
                lazy.release_block(i)
                check_finite(x, f"the output of block {i} (windows {g}..{g + ids.shape[0] - 1})")
                bar.update(ids.shape[0])
            head = lazy.load_module(adapter.lm_head)
            for k in range(ids.shape[0]):
                nlls.append(head_nll(head, norm(x[k : k + 1])[0], ids[k], post=post))
            lazy.release_module(adapter.lm_head)
    return nlls


def perplexity(
    model: nn.Module | LazyModel,
    tokens: torch.Tensor,
    *,
    seqlen: int = 2048,
    max_windows: int | None = None,
    dataset: str = "",
    source: str = "",
    note: str = "",
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` (or a block-onloaded ``LazyModel``) on a [1, N] token stream (see module docstring).

    Under ``torchrun`` (an initialized process group) each rank computes the windows ``k % size == rank``
    and every rank returns the whole result: the window losses gathered in window order, summed as in
    one process (the same bits when each rank computes a window as one process would)."""
    lazy = model if isinstance(model, LazyModel) else None
    if lazy is not None:
        model = lazy.model
    max_ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_ctx is not None and seqlen > max_ctx:
        raise DataError(f"seqlen {seqlen} exceeds the model's context of {max_ctx} tokens")
    all_wins = windows_of(tokens, seqlen, max_windows)
    world = World.current()  # under torchrun: this rank's windows k % size == rank, gathered in order below
    mine = world.shard(all_wins.shape[0])
    wins = all_wins[mine]
    nlls: list[float] = []
    start = time.perf_counter()
    if lazy is not None:
        nlls = blockwise_nlls(lazy, wins, progress and world.main)
    bar = tqdm(wins if lazy is None else [], desc=f"ppl {dataset}", unit="win", disable=not progress or not world.main,
               leave=False)  # fmt: skip
    for k, nll in zip(mine, nlls, strict=False):  # block-onloaded: already computed
        check_finite(nll, f"the loss of window {k} of {dataset or 'the text'}")
    for w in bar:
        nlls.append(window_nll(model, w))
        check_finite(nlls[-1], f"the loss of window {mine[len(nlls) - 1]} of {dataset or 'the text'}")
        elapsed = time.perf_counter() - start
        bar.set_postfix(ppl=f"{exp_or_inf(sum(nlls) / len(nlls)):.3f}", tok_s=f"{len(nlls) * seqlen / elapsed:.0f}")
    nlls = world.gather(all_wins.shape[0], dict(zip(mine, nlls, strict=True)))
    seconds = time.perf_counter() - start
    ppl = exp_or_inf(sum(nlls) / len(nlls))
    check_finite(ppl, f"the perplexity of {dataset or 'the text'} (mean loss {sum(nlls) / len(nlls):.4g} nats)")
    return PerplexityResult(
        dataset=dataset,
        ppl=ppl,
        windows=len(nlls),
        seqlen=seqlen,
        tokens=len(nlls) * seqlen,
        source=source,
        note=note,
        seconds=seconds,
        tokens_per_s=len(nlls) * seqlen / seconds,
        window_nll=nlls,
    )
