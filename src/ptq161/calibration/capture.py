"""Capture what every decoder layer receives and replay layers with the same call.

The model's own forward computes each layer's inputs: the attention mask of the layer's type
(full or sliding window), the rotary table of its type (Gemma 3: a local and a global base),
position ids, anything else its architecture passes. ``record_layer_calls`` runs that forward
once with every decoder layer stood in for by a recorder that keeps its arguments and returns its
input unchanged (the layers' own weights are never touched, so it works on an onloaded model whose
layers sit on the meta device), and stops before the final norm and the head. Replaying each layer
with its call reproduces the model's hidden states (tested on every family in
``benchmarks/families.py``), and stays causal: with ``attention_mask=None`` SDPA applies causality
itself (tested, since the reference code silently lost it once).

The calls are recorded on one window and reused for every window of the same length; that is right
only when they do not depend on the tokens. ``record_layer_calls`` checks it on a second window and
refuses an architecture whose layer inputs do (e.g. per-layer token embeddings) in one line.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..models.adapters import Adapter

_DROPPED_KWARGS = (
    "past_key_values",
    "past_key_value",
    "layer_past",
    "use_cache",
    "cache_position",
    "output_attentions",
)


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (an int8 embedding has buffers only)."""
    return next(itertools.chain(module.parameters(), module.buffers())).device


class _Stop(Exception):
    pass


def _move(v: Any, device: torch.device | str) -> Any:
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, tuple):
        return tuple(_move(x, device) for x in v)
    if isinstance(v, dict):
        return {k: _move(x, device) for k, x in v.items()}
    return v


@dataclass
class BlockCall:
    """The arguments after the hidden states one decoder layer is called with (shared by all windows
    of one length): extra positional ``args`` and ``kwargs`` (mask, rotary cos/sin, position ids)."""

    kwargs: dict[str, Any]
    args: tuple = field(default=())

    def to(self, device: torch.device | str) -> BlockCall:
        """A copy with tensors (also inside tuples and dicts) moved to ``device``."""
        return BlockCall(_move(self.kwargs, device), _move(self.args, device))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


class _Recorder(nn.Module):
    """Stands in for one decoder layer during ``record_layer_calls``: keeps the call, returns the input.

    Attribute reads the model's forward makes on its layers (e.g. ``attention_type``) go to the layer.
    """

    def __init__(self, layer: nn.Module, calls: list[BlockCall | None], index: int, last: bool) -> None:
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not registered: the recorder owns no weights
        self._calls, self._index, self._last = calls, index, last

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        kept = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS}
        self._calls[self._index] = BlockCall(kept, tuple(args))
        if self._last:
            raise _Stop
        return hidden_states


@contextlib.contextmanager
def _recording(layers: nn.ModuleList, calls: list[BlockCall | None]) -> Iterator[None]:
    originals = list(layers)
    try:
        for i, layer in enumerate(originals):
            layers[i] = _Recorder(layer, calls, i, last=i == len(originals) - 1)
        yield
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer


def _architecture(model: nn.Module) -> str:
    archs = getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__]
    return archs[0]


@torch.no_grad()
def _record_once(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor) -> list[BlockCall]:
    calls: list[BlockCall | None] = [None] * len(layers)
    with _recording(layers, calls):
        try:
            model(input_ids=ids, use_cache=False)
        except _Stop:
            pass
    missing = [i for i, c in enumerate(calls) if c is None]
    if missing:
        raise UnsupportedModelError(
            f"{_architecture(model)}: its forward does not call decoder layers {missing} in order; "
            "ptq161 cannot replay its layers one by one"
        )
    return calls  # type: ignore[return-value]


def record_layer_calls(model: nn.Module, adapter: Adapter, windows: torch.Tensor) -> list[BlockCall]:
    """The call of every decoder layer for windows of this length, as the model's forward makes it.

    windows: int64 [N, seqlen] (window 0 is recorded; window 1, when there is one, checks that the
    calls do not depend on the tokens). Returns one ``BlockCall`` per decoder layer, each for a batch
    of one window (a mask with a batch dimension has size 1 there and broadcasts).
    """
    layers = adapter.decoder_layers(model)
    device = module_device(model.get_submodule(adapter.embed))
    calls = _record_once(model, layers, windows[:1].to(device))
    if windows.shape[0] > 1 and not torch.equal(windows[0], windows[1]):
        other = _record_once(model, layers, windows[1:2].to(device))
        for i, (a, b) in enumerate(zip(calls, other, strict=True)):
            diff = [k for k in a.kwargs.keys() | b.kwargs.keys() if not _same(a.kwargs.get(k), b.kwargs.get(k))]
            if diff or not _same(a.args, b.args):
                what = ", ".join(sorted(diff)) or "positional arguments"
                raise UnsupportedModelError(
                    f"{_architecture(model)}: decoder layer {i} receives inputs that depend on the tokens "
                    f"({what}); ptq161 cannot replay its layers one by one"
                )
    return calls


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, adapter: Adapter, windows: torch.Tensor, batch_size: int = 1
) -> tuple[torch.Tensor, list[BlockCall]]:
    """Hidden states entering the first decoder layer for each window, and every layer's call.

    windows: int64 [N, seqlen] -> (float [N, seqlen, hidden], one ``BlockCall`` per decoder layer).
    Only the embedding (and what the model computes before its layers) runs; the decoder layers
    are not executed.
    """
    calls = record_layer_calls(model, adapter, windows)
    first = adapter.decoder_layers(model)[0]
    device = module_device(model.get_submodule(adapter.embed))  # onloaded decoder layers sit on meta
    captured: list[torch.Tensor] = []

    def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args[0] if args else kwargs["hidden_states"]).detach())
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
    return torch.cat(captured), calls


def run_block(block: nn.Module, x: torch.Tensor, call: BlockCall, batch_size: int = 1) -> torch.Tensor:
    """Apply one decoder block to x [N, seq, d] in batches -> [N, seq, d], on x's device.

    ``call`` is that block's (``capture_block_inputs`` returns one per layer). The streams may live
    on another device than the block (calibration streams kept on the CPU for a GPU too small for
    them): each batch moves to the block's device and its output back (``Tensor.to`` is
    differentiable, so training through it works).
    """
    device = module_device(block)
    outs = []
    for i in range(0, x.shape[0], batch_size):
        out = block(x[i : i + batch_size].to(device), *call.args, **call.kwargs)
        outs.append((out[0] if isinstance(out, tuple) else out).to(x.device))
    return torch.cat(outs)
