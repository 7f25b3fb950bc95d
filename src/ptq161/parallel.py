"""Data parallelism across processes with ``torch.distributed`` (started by ``torchrun``).

A ``World`` is this process's rank among ``size`` processes; ``World.current()`` is the initialized
default process group, or the single-process world. Work is sharded by index (item ``k`` belongs to
rank ``k % size``) and gathered back in index order, so a reduction over the gathered list runs in
the same order as in one process and gives the same bits (as long as each item is computed the same
way, e.g. the same number of threads per process).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import PTQ161Error

TIMEOUT_MINUTES = 30  # a rank that stops answering fails the others' collective calls after this
WAIT_HOURS = 72  # how long the other ranks wait for a stage rank 0 runs alone (the block stage)


@dataclass(frozen=True)
class World:
    """This process's ``rank`` among ``size`` processes (``size`` 1: no process group)."""

    rank: int = 0
    size: int = 1

    @staticmethod
    def current() -> World:
        """The default process group's world, or the single-process one."""
        if dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size())
        return World()

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints and writes."""
        return self.rank == 0

    def shard(self, n: int) -> list[int]:
        """The indices of ``n`` items this rank computes: ``rank, rank + size, ...``."""
        return list(range(self.rank, n, self.size))

    def gather(self, n: int, mine: dict[int, Any]) -> list[Any]:
        """Every rank's ``{index: value}`` for ``n`` items, as one list in index order (on every rank)."""
        if self.size == 1:
            return [mine[k] for k in range(n)]
        parts: list[dict[int, Any] | None] = [None] * self.size
        dist.all_gather_object(parts, mine)
        merged = {k: v for part in parts for k, v in (part or {}).items()}
        if sorted(merged) != list(range(n)):
            raise PTQ161Error(f"the ranks returned {len(merged)} of {n} items")
        return [merged[k] for k in range(n)]

    def barrier(self) -> None:
        """Wait for every rank (nothing in one process)."""
        if self.size > 1:
            with collective_errors(self):
                dist.barrier()

    def waiting_group(self, hours: float = WAIT_HOURS) -> Any:
        """A gloo group of every rank whose calls wait up to ``hours`` (None in one process), for
        ``wait_for_main``. Collective: every rank makes it at the same point, before rank 0 goes off alone
        (making it later would itself wait under the default group's timeout)."""
        if self.size == 1:
            return None
        with collective_errors(self):
            return dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=hours))

    def wait_for_main(self, group: Any) -> None:
        """Every rank waits here until rank 0 arrives, for as long as ``group`` (``waiting_group``) allows: the
        other ranks idle while rank 0 runs a stage alone, however long it takes. A rank that dies ends the
        wait at once (its connections close) with ``collective_errors``' one-line error."""
        if self.size > 1:
            with collective_errors(self):
                dist.barrier(group=group)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; for things made once, e.g. a stage's start)."""
        if self.size == 1:
            return obj
        box = [obj if self.rank == src else None]
        with collective_errors(self):
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks in place (every rank gets the sum); returns ``t``."""
        if self.size > 1:
            with collective_errors(self):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


@contextlib.contextmanager
def collective_errors(world: World) -> Iterator[None]:
    """A collective call that fails because another rank is gone (killed, crashed, timed out) raises a
    one-line ``PTQ161Error`` naming this rank instead of the backend's multi-line error."""
    try:
        yield
    except RuntimeError as e:  # the backends' errors (dist.DistError included)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PTQ161Error(
            f"rank {world.rank} of {world.size}: another rank stopped answering ({first}); the run can be resumed "
            "with --resume and the same number of ranks"
        ) from None


def init_from_env(device: str = "cpu") -> World:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1): gloo on the
    CPU, NCCL on CUDA devices. Without ``torchrun`` (or with one process) nothing is initialized."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    return World.current()


def finish() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(device: str = "cpu") -> Iterator[World]:
    """``init_from_env(device)`` for the body of a ``with``, then ``finish()`` whatever happens."""
    try:
        yield init_from_env(device)
    finally:
        finish()


__all__ = ["World", "collective_errors", "finish", "init_from_env", "joined"]
