"""What a model's forward does after its head, for loops that apply the head themselves.

The block-onloaded perplexity loop runs the final norm and the head itself; ``logits_transform``
gives what the model's own forward then does to the logits (Granite's logit scaling, Cohere's
logit scale, Gemma's final soft-capping), from its config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def logits_transform(config: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model's forward does to the head's output (logits [..., vocab] -> the same shape), or
    None for nothing: Granite divides by ``logits_scaling``, Cohere multiplies by ``logit_scale``,
    Gemma 2/3 soft-cap with ``final_logit_softcapping`` (tanh(x / c) * c)."""
    scaling = getattr(config, "logits_scaling", None)
    scale = getattr(config, "logit_scale", None)
    cap = getattr(config, "final_logit_softcapping", None)
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if scaling not in (None, 1, 1.0):
        steps.append(lambda x: x / scaling)
    if scale not in (None, 1, 1.0):
        steps.append(lambda x: x * scale)
    if cap:
        steps.append(lambda x: torch.tanh(x / cap) * cap)
    if not steps:
        return None

    def apply(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return apply
