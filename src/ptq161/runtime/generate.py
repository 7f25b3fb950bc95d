"""Batch-1 greedy generation (the fused engine or the model's own forward) and its speed."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import PTQ161Error
from .engine import DecodeEngine, last_logits_only


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


def decode_path(model: nn.Module, engine: str) -> str:
    """How ``greedy_generate(model, ..., engine)`` decodes, in words: the fused engine, or the model's
    forward and why (the engine's reason it does not apply, or ``--engine off``)."""
    if engine == "off":
        return "the model's forward (--engine off)"
    reason = DecodeEngine.unsupported_reason(model)
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
    reason = DecodeEngine.unsupported_reason(model)
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
