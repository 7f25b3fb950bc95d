"""lm-eval's ``HFLM`` on a model in memory, taking part in lm-eval's own data-parallel mode under ``torchrun``.

lm-eval splits a task's documents by ``lm.rank`` / ``lm.world_size`` and gathers the per-document
metrics to rank 0 through the model's ``all_gather`` / ``gather_object`` / ``barrier``. ``HFLM`` sets
them up only when it loads the model itself (through accelerate); given a model instance it stays one
process. ``RankedHFLM`` takes them from the ``torch.distributed`` process group instead. Imported only
when lm-eval is installed (the ``eval`` extra).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lm_eval.models.huggingface import HFLM

from ..parallel import World


class RankedHFLM(HFLM):
    """``HFLM`` whose rank and world size are ``world``'s (``world.size`` 1: plain ``HFLM``)."""

    def __init__(self, world: World, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rank, self._world_size = world.rank, world.size

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along dim 0 in rank order (a scalar counts as [1])."""
        if self.world_size <= 1:
            return tensor
        t = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world_size > 1:
            dist.barrier()


__all__ = ["RankedHFLM"]
