"""Per-input-channel activation statistics of a block's linear layers."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import PTQ161Error


class ChannelStats:
    """Running max |x| and mean |x| per input channel over all tokens seen."""

    def __init__(self, n: int) -> None:
        self.max = torch.zeros(n)
        self.sum = torch.zeros(n, dtype=torch.float64)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Add activations x [..., n]."""
        flat = x.detach().reshape(-1, x.shape[-1]).abs().float().cpu()
        self.max = torch.maximum(self.max, flat.max(dim=0).values)
        self.sum += flat.sum(dim=0, dtype=torch.float64)
        self.count += flat.shape[0]

    def get(self, kind: str) -> torch.Tensor:
        """``max`` or ``mean`` statistic, float32 [n]."""
        if kind == "max":
            return self.max.clone()
        if kind == "mean":
            return (self.sum / max(self.count, 1)).float()
        raise ValueError(f"unknown statistic '{kind}' (max, mean)")


@contextmanager
def record_input_stats(linears: dict[str, nn.Linear]) -> Iterator[dict[str, ChannelStats]]:
    """While active, every forward of the given linears updates its ``ChannelStats``."""
    stats = {name: ChannelStats(lin.in_features) for name, lin in linears.items()}
    handles = [
        lin.register_forward_pre_hook(lambda _m, args, s=stats[name]: s.update(args[0]))
        for name, lin in linears.items()
    ]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


class HessianAccumulator:
    """H = (2 / N) sum_t x_t x_t^T over all N tokens seen (GPTQ's layer Hessian), float64 accumulate."""

    def __init__(self, n: int) -> None:
        self.h = torch.zeros(n, n, dtype=torch.float64)
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Add inputs x [..., n] (summed into H in place: no [n, n] temporary)."""
        flat = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        self.h.addmm_(flat.T, flat)
        self.count += flat.shape[0]

    def get(self) -> torch.Tensor:
        """float32 [n, n]."""
        return (2.0 * self.h / max(self.count, 1)).float()


class _SharedInputs:
    """Linears that read the same input tensor (q/k/v of attention; gate/up of the MLP) share one
    ``HessianAccumulator``, found from the forward itself: a linear whose first input is the very tensor
    (same object, unmodified) the previously called linear accumulated joins that linear's accumulator.
    Afterwards each member checks it still reads its group's input, and only the first member adds it."""

    def __init__(self, linears: dict[str, nn.Linear]) -> None:
        self.sizes = {name: lin.in_features for name, lin in linears.items()}
        self.acc: dict[str, HessianAccumulator] = {}
        self.leader: dict[str, str] = {}  # member -> the first linear of its group
        self.last: dict[str, tuple[weakref.ref, int]] = {}  # leader -> (its last input, that input's version)
        self.prev: str | None = None  # the leader of the last accumulated input

    def _is_last(self, leader: str, x: torch.Tensor) -> bool:
        ref, version = self.last.get(leader, (None, -1))
        return ref is not None and ref() is x and x._version == version

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if name not in self.leader:  # first call: join the group whose input this is, or lead a new one
            prev = self.prev
            joins = prev is not None and self._is_last(prev, x) and self.sizes[prev] == self.sizes[name]
            self.leader[name] = prev if joins else name
            self.acc[name] = self.acc[prev] if joins else HessianAccumulator(self.sizes[name])
            if joins:
                return
        leader = self.leader[name]
        if leader != name:
            if not self._is_last(leader, x):
                raise PTQ161Error(
                    f"{name} read its group's input ({leader}'s) in the first forward but not in this one: "
                    "a Hessian shared between them would be wrong"
                )
            return
        self.acc[name].update(x)
        self.last[name] = (weakref.ref(x), x._version)
        self.prev = name


@contextmanager
def record_hessians(linears: dict[str, nn.Linear]) -> Iterator[dict[str, HessianAccumulator]]:
    """While active, every forward of the given linears accumulates its input Hessian; linears that read
    the same input tensor share one accumulator (``_SharedInputs``: the same H, accumulated once). The
    yielded dict has an entry per linear once the context exits (an empty accumulator for one that never
    ran)."""
    shared = _SharedInputs(linears)
    handles = [
        lin.register_forward_pre_hook(lambda _m, args, name=name: shared(name, args[0]))
        for name, lin in linears.items()
    ]
    try:
        yield shared.acc
    finally:
        for h in handles:
            h.remove()
        for name, n in shared.sizes.items():
            shared.acc.setdefault(name, HessianAccumulator(n))
