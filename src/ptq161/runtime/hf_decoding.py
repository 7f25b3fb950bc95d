"""transformers' ``generate`` on the fused engine: ``model.generate(ids, custom_generate=engine_decoding)``.

A packed directory loaded after ``import ptq161`` (``ptq161.load`` or ``AutoModelForCausalLM.from_pretrained``)
needs no argument: ``EngineHfQuantizer`` gives the model a ``generate`` (``EngineGenerate``) that passes
its own ``EngineDecoding`` (the loop of ``engine_decoding``, keeping the engine) for greedy and sampled
generation (the way transformers itself installs a repository's
``custom_generate``), and transformers' own decoding for every other mode (beams, assisted, ...) or
when the caller passes ``custom_generate``.

``custom_generate`` with a callable is transformers' own extension point for the decoding loop: generate
prepares the generation config, the logits processors (temperature, top-k, top-p, repetition penalty,
...) and the stopping criteria (max length, eos, stop strings) as usual, then calls this loop instead of
its ``_sample``. The loop prefills with the model's forward and decodes every next token with the fused
engine, applying transformers' own processors and criteria to the engine's logits, so greedy and
sampled generation keep their meaning. Where the engine does not apply (batch > 1, padding, outputs
asked as a dict, a model the engine does not serve) it runs transformers' ``_sample`` unchanged.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from transformers.generation import GenerationMode
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
)

from ..models.hf_quantizer import PTQ161HfQuantizer
from .engine import DecodeEngine

ENGINE_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)


def _min_length_block(processor: Any, input_ids: torch.Tensor) -> torch.Tensor | None:
    """For transformers' min-length processors: the eos ids they set to -inf at this length (empty: none
    now); None for every other processor."""
    if type(processor) is MinNewTokensLengthLogitsProcessor:
        active = input_ids.shape[-1] - processor.prompt_length_to_skip < processor.min_new_tokens
    elif type(processor) is MinLengthLogitsProcessor:
        active = input_ids.shape[-1] < processor.min_length
    else:
        return None
    return torch.as_tensor(processor.eos_token_id).reshape(-1) if active else torch.empty(0, dtype=torch.long)


def apply_processors(processors: LogitsProcessorList, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``processors(input_ids, scores)`` with the same result, the min-length processors applied as what they
    compute (their eos columns set to -inf while the text is too short) instead of building a mask over the
    vocabulary at every token. input_ids int64 [1, T], scores float32 [1, vocab] -> [1, vocab]."""
    vocab = scores.shape[-1]
    for p in processors:
        block = _min_length_block(p, input_ids)
        if block is None:
            scores = LogitsProcessorList([p])(input_ids, scores)
        elif block.numel():
            scores = scores.clone()
            scores[..., block[(block >= 0) & (block < vocab)]] = -math.inf
    return scores


def _engine_applies(model: nn.Module, input_ids: torch.Tensor, config: Any, max_len: int, kwargs: dict) -> bool:
    mask = kwargs.get("attention_mask")
    return (
        input_ids.shape[0] == 1
        and not config.return_dict_in_generate
        and (mask is None or bool(mask.all()))
        and DecodeEngine.unsupported_reason(model, max_len) is None
    )


class EngineDecoding:
    """transformers' ``custom_generate`` decoding loop on the fused engine, keeping its engine between calls
    (rebuilt for another model or a longer context; its cache is overwritten by every prefill)."""

    def __init__(self) -> None:
        self.engine: DecodeEngine | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave the engine behind (numba buffers; rebuilt on the next call)."""
        return {"engine": None}

    def _engine(self, model: nn.Module, max_len: int) -> DecodeEngine:
        e = self.engine
        if e is None or e.model is not model or e.max_len < max_len:
            e = self.engine = DecodeEngine(model, max_len=max_len)
        return e

    @torch.no_grad()
    def __call__(
        self,
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
        engine = self._engine(model, max_len)
        logits = engine.prefill(input_ids)
        pos = input_ids.shape[1]
        while True:
            scores = apply_processors(logits_processor, input_ids, logits[None].float())
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


def engine_decoding(model: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``EngineDecoding`` with a fresh engine: ``model.generate(ids, custom_generate=engine_decoding)``
    (the arguments are ``EngineDecoding.__call__``'s). input_ids: int64 [1, T] -> int64 [1, T + new]."""
    return EngineDecoding()(model, *args, **kwargs)


def plain_decoding(model: nn.Module, kwargs: dict[str, Any]) -> bool:
    """Whether ``model.generate(**kwargs)`` would run greedy search or sampling (the engine's modes): the
    generation config (``kwargs["generation_config"]`` or the model's) updated with ``kwargs``."""
    config = copy.deepcopy(kwargs.get("generation_config") or model.generation_config)
    config.update(**{k: v for k, v in kwargs.items() if k != "generation_config" and hasattr(config, k)})
    return config.get_generation_mode(kwargs.get("assistant_model")) in ENGINE_MODES


class EngineGenerate:
    """A packed model's ``generate``: transformers' ``generate`` with its ``EngineDecoding`` as
    ``custom_generate`` when the caller passes none and the generation is greedy or sampled; unchanged
    otherwise. The engine lives as long as the model (``model.generate`` holds it)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.decoding = EngineDecoding()

    def __call__(self, *args: Any, custom_generate: Any = None, **kwargs: Any) -> Any:
        """``model.generate(*args, **kwargs)``; int64 [B, T] -> int64 [B, T + new] (or transformers' output)."""
        if custom_generate is None and plain_decoding(self.model, kwargs):
            custom_generate = self.decoding
        return type(self.model).generate(self.model, *args, custom_generate=custom_generate, **kwargs)


class EngineHfQuantizer(PTQ161HfQuantizer):
    """The packed-model quantizer whose loaded models generate on the fused engine (``EngineGenerate``)."""

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        model = super()._process_model_after_weight_loading(model, **kwargs)
        model.generate = EngineGenerate(model)
        return model


__all__ = ["EngineDecoding", "EngineGenerate", "EngineHfQuantizer", "apply_processors", "engine_decoding"]
