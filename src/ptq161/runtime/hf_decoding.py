"""transformers' ``generate`` on the fused engine: ``model.generate(ids, custom_generate=engine_decoding)``.

``custom_generate`` with a callable is transformers' own extension point for the decoding loop: generate
prepares the generation config, the logits processors (temperature, top-k, top-p, repetition penalty,
...) and the stopping criteria (max length, eos, stop strings) as usual, then calls this loop instead of
its ``_sample``. The loop prefills with the model's forward and decodes every next token with the fused
engine, applying transformers' own processors and criteria to the engine's logits, so greedy and
sampled generation keep their meaning. Where the engine does not apply (batch > 1, padding, outputs
asked as a dict, a model the engine does not serve) it runs transformers' ``_sample`` unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .engine import DecodeEngine


def _engine_applies(model: nn.Module, input_ids: torch.Tensor, config: Any, max_len: int, kwargs: dict) -> bool:
    mask = kwargs.get("attention_mask")
    return (
        input_ids.shape[0] == 1
        and not config.return_dict_in_generate
        and (mask is None or bool(mask.all()))
        and DecodeEngine.unsupported_reason(model, max_len) is None
    )


@torch.no_grad()
def engine_decoding(
    model: nn.Module,
    input_ids: torch.Tensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    synced_gpus: bool = False,
    streamer: Any = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """The decoding loop of ``model.generate`` (transformers' ``custom_generate`` signature).

    input_ids: int64 [1, T] -> int64 [1, T + new] (the prompt and the generated tokens, as generate
    returns them). Greedy unless ``generation_config.do_sample``.
    """
    max_len = int(
        getattr(stopping_criteria, "max_length", None) or input_ids.shape[1] + generation_config.max_new_tokens
    )
    if synced_gpus or not _engine_applies(model, input_ids, generation_config, max_len, model_kwargs):
        from transformers.generation.utils import GenerationMixin

        return GenerationMixin._sample(
            model, input_ids, logits_processor, stopping_criteria, generation_config,
            synced_gpus=synced_gpus, streamer=streamer, **model_kwargs,
        )  # fmt: skip
    engine = DecodeEngine(model, max_len=max_len)
    logits = engine.prefill(input_ids)
    pos = input_ids.shape[1]
    while True:
        scores = logits_processor(input_ids, logits[None].float())
        if generation_config.do_sample:
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1)[0]
        else:
            token = scores.argmax(dim=-1)
        input_ids = torch.cat([input_ids, token[:, None] if token.dim() == 1 else token[None]], dim=-1)
        if streamer is not None:
            streamer.put(token.cpu())
        if bool(stopping_criteria(input_ids, scores).all()):
            break
        logits = engine.step(int(input_ids[0, -1]), pos)
        pos += 1
    if streamer is not None:
        streamer.end()
    return input_ids


__all__ = ["engine_decoding"]
