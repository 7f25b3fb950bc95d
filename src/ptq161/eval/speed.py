"""Batch-1 generation speed: greedy decoding tokens/s and prefill tokens/s."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class SpeedResult:
    """Timing of one model: prefill of ``prompt_tokens`` and greedy decoding of ``new_tokens``."""

    prompt_tokens: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    tokens: list[int]

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, new_tokens: int) -> tuple[list[int], float, float]:
    """Greedy decoding with a KV cache: (generated ids, prefill seconds, decode seconds). input_ids [1, T]."""
    from transformers import DynamicCache

    cache = DynamicCache()
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, past_key_values=cache, use_cache=True)
    t1 = time.perf_counter()
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    generated = [int(token)]
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
        generated.append(int(token))
    t2 = time.perf_counter()
    return generated, t1 - t0, t2 - t1


def measure_speed(model: nn.Module, input_ids: torch.Tensor, new_tokens: int = 64, warmup: int = 4) -> SpeedResult:
    """Prefill and decode tokens/s of ``model`` for one prompt (after a short warm-up run)."""
    greedy_generate(model, input_ids[:, :8], warmup)
    tokens, prefill_s, decode_s = greedy_generate(model, input_ids, new_tokens)
    return SpeedResult(
        prompt_tokens=input_ids.shape[1],
        new_tokens=new_tokens,
        prefill_tokens_per_s=input_ids.shape[1] / prefill_s,
        decode_tokens_per_s=(new_tokens - 1) / decode_s,
        tokens=tokens,
    )
