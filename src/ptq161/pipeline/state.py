"""The one resume mechanism of every long run (block-wise quantization, preprocessing).

A run keeps its state in ``<output>/.ptq161-state``: tensor files written under new names
first, then ``progress.json`` (atomically) naming the settings' fingerprint and how far the
run got. A kill at any moment leaves either the previous state or the new one; resuming
with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import PTQ161Error
from ..utils import atomic_save_file, atomic_write_json, read_json

STATE_DIR = ".ptq161-state"
PROGRESS = "progress.json"


def fingerprint(settings: dict[str, Any]) -> str:
    """A stable hash of the settings that determine a run (for safe resume)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunState:
    """Resume state of one run in ``root / STATE_DIR``, bound to the run's ``settings``."""

    def __init__(self, root: Path, settings: dict[str, Any], stage: str = "", writes: bool = True) -> None:
        self.dir = root / STATE_DIR / stage if stage else root / STATE_DIR
        self.fingerprint = fingerprint(settings)
        self.writes = writes  # False: reads what another process (rank 0 of a torchrun job) writes

    def progress(self) -> dict[str, Any] | None:
        """The last committed progress record, or None when there is nothing to resume."""
        f = self.dir / PROGRESS
        if not f.is_file():
            return None
        info = read_json(f, f"; remove {self.dir} to start over")
        if info.get("fingerprint") != self.fingerprint:
            raise PTQ161Error(f"the saved state in {self.dir} was made with other settings; remove it to start over")
        return info["progress"]

    def save(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write the tensor file ``name`` (not yet part of the state until ``commit``)."""
        if not self.writes:
            return
        atomic_save_file({k: v.detach().cpu() for k, v in tensors.items()}, self.dir / f"{name}.safetensors")

    def load(self, name: str) -> dict[str, torch.Tensor]:
        """Read the tensor file ``name``."""
        return load_file(str(self.dir / f"{name}.safetensors"))

    def commit(self, progress: dict[str, Any], drop: Iterable[str] = ()) -> None:
        """Record ``progress`` (JSON) as the new state, then delete the tensor files named in ``drop``."""
        if not self.writes:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.dir / PROGRESS, {"fingerprint": self.fingerprint, "progress": progress})
        for name in drop:
            (self.dir / f"{name}.safetensors").unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the whole state (the run finished)."""
        if not self.writes:
            return
        shutil.rmtree(self.dir, ignore_errors=True)


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as (tensors for a safetensors file, JSON-ready rest): nothing is pickled."""
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def save_training(
    state: RunState,
    prefix: str,
    step: int,
    tensors: dict[str, torch.Tensor],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    stage: dict[str, Any],
) -> None:
    """Checkpoint a training loop at ``step``: ``tensors`` (trained weights, RNG state, ...) and the optimizer
    in ``PREFIX_STEP.safetensors``, then commit ``stage`` with the step, optimizer groups and scheduler state
    (JSON) and drop the previous checkpoint."""
    opt_tensors, opt_rest = optimizer_state(opt)
    state.save(f"{prefix}_{step:06d}", {**tensors, **{f"optimizer.{k}": v for k, v in opt_tensors.items()}})
    previous = stage.get("step", 0)
    stage.update(step=step, optimizer=opt_rest, scheduler=sched.state_dict())
    state.commit(stage, drop=[f"{prefix}_{previous:06d}"] if previous and previous != step else [])


def load_training(
    state: RunState,
    prefix: str,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    stage: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """Restore the optimizer and scheduler that ``save_training`` saved at ``stage["step"]``; return the
    checkpoint's other tensors."""
    tensors = state.load(f"{prefix}_{stage['step']:06d}")
    opt_tensors = {k.removeprefix("optimizer."): v for k, v in tensors.items() if k.startswith("optimizer.")}
    load_optimizer_state(opt, opt_tensors, stage["optimizer"])
    sched.load_state_dict(stage["scheduler"])
    return {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    """Inverse of ``optimizer_state``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, _, k = key.partition(".")
        state.setdefault(int(i), {})[k] = v
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in rest["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
