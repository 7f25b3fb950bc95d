"""Batch-1 generation (the fused engine or the model's own forward): greedy ids and their speed, and text
streamed token by token with sampling and stop strings (``Generation``)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import PTQ161Error
from .engine import DecodeEngine, last_logits_only
from .sampling import GREEDY, Sampling, next_token


@dataclass
class SpeedResult:
    """Timing of one model: prefill of ``prompt_tokens`` and greedy decoding of ``new_tokens``."""

    prompt_tokens: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    tokens: list[int]
    engine: bool = False  # decoded by the fused numba engine (ptq161.runtime.engine) instead of the model's forward

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


def decode_path(model: nn.Module, engine: str, max_len: int = 2048) -> str:
    """How ``greedy_generate(model, ..., engine)`` decodes ``max_len`` positions, in words: the fused
    engine, or the model's forward and why (the engine's reason it does not apply, or ``--engine off``)."""
    if engine == "off":
        return "the model's forward (--engine off)"
    reason = DecodeEngine.unsupported_reason(model, max_len)
    return "the fused engine" if reason is None else f"the model's forward (the fused engine does not apply: {reason})"


def pick_engine(model: nn.Module, engine: str, max_len: int):
    """The fused decode engine for ``model`` or None.

    engine: "auto" (use it when the model is a packed LLaMA-layout model on the CPU),
    "on" (required: ``PTQ161Error`` with the reason otherwise) or "off".
    """
    if engine not in ("auto", "on", "off"):
        raise PTQ161Error(f"engine must be auto, on or off, got '{engine}'")
    if engine == "off":
        return None
    reason = DecodeEngine.unsupported_reason(model, max_len)
    if reason is None:
        return DecodeEngine(model, max_len=max_len)
    if engine == "on":
        raise PTQ161Error(f"the fused decode engine cannot run this model: {reason}")
    return None


@torch.no_grad()
def greedy_generate(
    model: nn.Module, input_ids: torch.Tensor, new_tokens: int, engine: str = "off"
) -> tuple[list[int], float, float]:
    """Greedy decoding with a KV cache: (generated ids, prefill seconds, decode seconds). input_ids [1, T].

    engine: "off" runs the model's own forward every step; "auto"/"on" use the fused
    decode engine for packed models (see ``pick_engine``).
    """
    from transformers import DynamicCache

    eng = pick_engine(model, engine, input_ids.shape[1] + new_tokens)
    if eng is not None:
        return eng.generate(input_ids, new_tokens)

    cache = DynamicCache()
    last = last_logits_only(model)
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, **last)
    t1 = time.perf_counter()
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    generated = [int(token)]
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, past_key_values=cache, use_cache=True, **last)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        generated.append(int(token))
    t2 = time.perf_counter()
    return generated, t1 - t0, t2 - t1


def measure_speed(
    model: nn.Module, input_ids: torch.Tensor, new_tokens: int = 64, warmup: int = 4, engine: str = "off"
) -> SpeedResult:
    """Prefill and decode tokens/s of ``model`` for one prompt (after a short warm-up run)."""
    eng = pick_engine(model, engine, input_ids.shape[1] + new_tokens)
    run = eng.generate if eng is not None else functools.partial(greedy_generate, model)
    run(input_ids[:, :8], warmup)
    tokens, prefill_s, decode_s = run(input_ids, new_tokens)
    return SpeedResult(
        prompt_tokens=input_ids.shape[1],
        new_tokens=new_tokens,
        prefill_tokens_per_s=input_ids.shape[1] / prefill_s,
        decode_tokens_per_s=(new_tokens - 1) / decode_s,
        tokens=tokens,
        engine=eng is not None,
    )


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """The token ids that end a generation: the generation config's eos (one or several, e.g. a chat
    model's end-of-turn) and the tokenizer's."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        eos = getattr(src, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids


def context_length(model: nn.Module) -> int:
    """The model's context in tokens (``max_position_embeddings``; 2048 when the config has none)."""
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048)


class Generation:
    """One prompt's continuation, token by token: iterate for the text as it is made (string deltas);
    afterwards ``text``, ``tokens``, ``finish_reason`` ("stop": end-of-sequence token or stop string,
    "length": ``max_new_tokens`` reached) and ``path`` (how it decoded) are set.

    input_ids: int64 [1, T]. ``engine``: a ``DecodeEngine`` to reuse (its cache is overwritten from
    position 0; callers serialise requests), or None to decode through the model's own forward.
    Stop strings are never emitted: text that could still become one is held back until it cannot.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling = GREEDY,
        stop: tuple[str, ...] = (),
        engine: DecodeEngine | None = None,
        ignore_eos: bool = False,
    ) -> None:
        if max_new_tokens < 1:
            raise PTQ161Error(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        total, ctx = input_ids.shape[1] + max_new_tokens, context_length(model)
        if engine is not None:
            ctx = min(ctx, engine.max_len)
        if total > ctx:
            raise PTQ161Error(
                f"prompt of {input_ids.shape[1]} tokens + {max_new_tokens} new tokens = {total} exceeds the "
                f"context of {ctx} tokens"
            )
        self.model, self.tokenizer, self.input_ids = model, tokenizer, input_ids
        self.max_new_tokens, self.sampling, self.stop, self.engine = max_new_tokens, sampling, stop, engine
        self.eos = set() if ignore_eos else _eos_ids(model, tokenizer)  # ignore_eos: always max_new_tokens
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.eos_token: int | None = None  # the end-of-sequence token that finished it (not in tokens)
        self.path = "the fused engine" if engine is not None else "the model's forward"

    def _logits(self) -> Iterator[torch.Tensor]:
        """Next-token logits [vocab] after the prompt, then after each token in ``self.tokens``."""
        ids = self.input_ids
        if self.engine is not None:
            logits = self.engine.prefill(ids)
            pos = ids.shape[1]
            while True:
                yield logits
                logits = self.engine.step(self.tokens[-1], pos)
                pos += 1
        from transformers import DynamicCache

        cache, last = DynamicCache(), last_logits_only(self.model)
        with torch.no_grad():
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **last)
            while True:
                yield out.logits[0, -1]
                step = torch.tensor([[self.tokens[-1]]], device=ids.device)
                out = self.model(input_ids=step, past_key_values=cache, use_cache=True, **last)

    def __iter__(self) -> Iterator[str]:
        rng = self.sampling.rng()
        hold = max((len(s) for s in self.stop), default=1) - 1  # characters that may start a stop string
        emitted = 0
        with torch.no_grad():
            for logits in self._logits():
                token = next_token(logits, self.sampling, rng)
                if token in self.eos:
                    self.finish_reason, self.eos_token = "stop", token
                    break
                self.tokens.append(token)
                text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
                cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
                if cut >= 0:
                    self.text, self.finish_reason = text[:cut], "stop"
                    break
                self.text = text
                if len(self.tokens) >= self.max_new_tokens:
                    self.finish_reason = "length"
                    break
                safe = len(text) - hold
                if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next byte
                    safe = min(safe, len(text) - 1)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
        if len(self.text) > emitted:
            yield self.text[emitted:]
