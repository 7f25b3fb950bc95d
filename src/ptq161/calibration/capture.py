"""Capture the inputs of the first decoder block and replay blocks with the same call.

A forward pre-hook on the first decoder layer records the hidden states and every
keyword argument the model passes (position embeddings, position ids, attention mask),
then stops the forward. Replaying each layer with these kwargs reproduces the model's
own hidden states (tested), and stays causal: with ``attention_mask=None`` SDPA applies
causality itself (tested, since the reference code silently lost it once).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models.adapters import Adapter

_DROPPED_KWARGS = ("past_key_values", "past_key_value", "use_cache", "cache_position", "output_attentions")


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (an int8 embedding has buffers only)."""
    return next(itertools.chain(module.parameters(), module.buffers())).device


class _Stop(Exception):
    pass


@dataclass
class BlockCall:
    """Keyword arguments every decoder block is called with (shared by all samples)."""

    kwargs: dict[str, Any]

    def to(self, device: torch.device | str) -> BlockCall:
        """A copy with tensors (also inside tuples) moved to ``device``."""

        def mv(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return v.to(device)
            if isinstance(v, tuple):
                return tuple(mv(x) for x in v)
            return v

        return BlockCall({k: mv(v) for k, v in self.kwargs.items()})


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, adapter: Adapter, windows: torch.Tensor, batch_size: int = 1
) -> tuple[torch.Tensor, BlockCall]:
    """Hidden states entering the first decoder block for each calibration window.

    windows: int64 [N, seqlen] -> (float [N, seqlen, hidden], BlockCall). Only the
    embedding runs; the decoder layers are not executed.
    """
    first = adapter.decoder_layers(model)[0]
    device = module_device(model.get_submodule(adapter.embed))  # onloaded decoder layers sit on meta
    captured: list[torch.Tensor] = []
    call: dict[str, Any] = {}

    def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden.detach())
        if not call:
            call.update({k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS and k != "hidden_states"})
        raise _Stop

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[i : i + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return torch.cat(captured), BlockCall(call)


def run_block(block: nn.Module, x: torch.Tensor, call: BlockCall, batch_size: int = 1) -> torch.Tensor:
    """Apply one decoder block to x [N, seq, d] in batches -> [N, seq, d], on x's device.

    The streams may live on another device than the block (calibration streams kept on the
    CPU for a GPU too small for them): each batch moves to the block's device and its output
    back (``Tensor.to`` is differentiable, so training through it works).
    """
    device = module_device(block)
    outs = []
    for i in range(0, x.shape[0], batch_size):
        out = block(x[i : i + batch_size].to(device), **call.kwargs)
        outs.append((out[0] if isinstance(out, tuple) else out).to(x.device))
    return torch.cat(outs)
