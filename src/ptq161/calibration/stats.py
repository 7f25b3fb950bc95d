"""Per-input-channel activation statistics of a block's linear layers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
        """Add inputs x [..., n]."""
        flat = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        self.h += flat.T @ flat
        self.count += flat.shape[0]

    def get(self) -> torch.Tensor:
        """float32 [n, n]."""
        return (2.0 * self.h / max(self.count, 1)).float()


@contextmanager
def record_hessians(linears: dict[str, nn.Linear]) -> Iterator[dict[str, HessianAccumulator]]:
    """While active, every forward of the given linears accumulates its input Hessian."""
    acc = {name: HessianAccumulator(lin.in_features) for name, lin in linears.items()}
    handles = [
        lin.register_forward_pre_hook(lambda _m, args, a=acc[name]: a.update(args[0])) for name, lin in linears.items()
    ]
    try:
        yield acc
    finally:
        for h in handles:
            h.remove()
