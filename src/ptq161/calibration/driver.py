"""The one block-wise driver every method runs on.

Captures the first block's inputs for the calibration windows, then for each decoder
block in order: run the original block on the FP stream (recording input statistics of
its linears), let the method quantize the block, run the quantized block on the
quantized stream, and save the state atomically so that ``resume`` continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import PTQ161Error
from ..methods.base import BlockContext, Method, Parts
from ..models.adapters import Adapter
from ..utils import atomic_write_json
from .capture import capture_block_inputs, run_block
from .stats import record_input_stats

STATE_DIR = ".ptq161-state"


@dataclass
class DriverResult:
    """Parts of every quantized linear, keyed by its full module path, and per-block logs."""

    parts: dict[str, Parts] = field(default_factory=dict)
    block_logs: list[dict[str, Any]] = field(default_factory=list)


def fingerprint(settings: dict[str, Any]) -> str:
    """A stable hash of the settings that determine a run (for safe resume)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _flatten(prefix: str, parts: dict[str, Parts]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{name}::{k}": v for name, p in parts.items() for k, v in p.items()}


def unflatten_parts(flat: dict[str, torch.Tensor]) -> dict[str, Parts]:
    """Inverse of the ``layer::part`` key flattening used in saved parts files."""
    out: dict[str, Parts] = {}
    for key, v in flat.items():
        layer, _, part = key.rpartition("::")
        out.setdefault(layer, {})[part] = v
    return out


class BlockState:
    """Resume state in ``<output>/.ptq161-state``: per-block parts, the two streams, progress."""

    def __init__(self, root: Path, fp: str) -> None:
        self.dir = root / STATE_DIR
        self.fp = fp

    def load(self) -> tuple[int, list[dict], dict[str, Parts], torch.Tensor | None, torch.Tensor | None]:
        """(blocks done, logs, parts, x_fp, x_q); zeros/None when there is nothing to resume."""
        prog = self.dir / "progress.json"
        if not prog.is_file():
            return 0, [], {}, None, None
        info = json.loads(prog.read_text())
        if info["fingerprint"] != self.fp:
            raise PTQ161Error(f"the saved state in {self.dir} was made with other settings; remove it to start over")
        done = info["done"]
        parts: dict[str, Parts] = {}
        for i in range(done):
            parts.update(unflatten_parts(load_file(str(self.dir / f"block_{i:04d}.safetensors"))))
        streams = load_file(str(self.dir / f"streams_{done:04d}.safetensors"))
        return done, info["logs"], parts, streams["x_fp"], streams["x_q"]

    def save(
        self, index: int, flat_parts: dict[str, torch.Tensor], x_fp: torch.Tensor, x_q: torch.Tensor, logs: list[dict]
    ) -> None:
        """Record that block ``index`` is done; the progress file is written last."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _save_atomic(flat_parts, self.dir / f"block_{index:04d}.safetensors")
        _save_atomic({"x_fp": x_fp.cpu(), "x_q": x_q.cpu()}, self.dir / f"streams_{index + 1:04d}.safetensors")
        atomic_write_json(self.dir / "progress.json", {"fingerprint": self.fp, "done": index + 1, "logs": logs})
        old = self.dir / f"streams_{index:04d}.safetensors"
        if old.exists():
            old.unlink()


def _rel_mse(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).float().pow(2).sum() / ref.float().pow(2).sum().clamp(min=1e-30)).item()


@torch.no_grad()
def quantize_blockwise(
    model: nn.Module,
    adapter: Adapter,
    windows: torch.Tensor,
    method: Method,
    *,
    seed: int,
    state: BlockState | None = None,
    progress: bool = True,
) -> DriverResult:
    """Quantize every decoder block of ``model`` in place with ``method``.

    windows: int64 [N, seqlen] calibration tokens. Only one block's weights are changed
    at a time; the two activation streams [N, seqlen, d] stay live.
    """
    layers = adapter.decoder_layers(model)
    x_fp, call = capture_block_inputs(model, adapter, windows)
    x_q = x_fp.clone()
    result = DriverResult()
    start = 0
    if state is not None:
        start, result.block_logs, result.parts, s_fp, s_q = state.load()
        if start:
            x_fp, x_q = s_fp.to(x_fp.device), s_q.to(x_q.device)
            for path, parts in result.parts.items():
                lin = model.get_submodule(path)
                lin.weight.copy_(method.dequantize(parts).to(lin.weight.device, lin.weight.dtype))
    bar = tqdm(
        range(start, len(layers)),
        desc=f"{method.name} blocks",
        unit="block",
        disable=not progress,
        initial=start,
        total=len(layers),
    )
    for i in bar:
        t0 = time.perf_counter()
        block = layers[i]
        linears = adapter.block_linears(block)
        with record_input_stats(linears) as stats:
            y_fp = run_block(block, x_fp, call)

        def report(i: int = i, **kw: object) -> None:
            bar.set_postfix(block=i, **kw)

        ctx = BlockContext(i, block, linears, x_fp, x_q, y_fp, stats, call, seed, report=report)
        out = method.quantize_block(ctx)
        y_q = run_block(block, x_q, call)
        log = {"block": i, "rel_mse_out": _rel_mse(y_q, y_fp), **out.log, "seconds": time.perf_counter() - t0}
        result.block_logs.append(log)
        prefix = f"{adapter.layers}.{i}."
        result.parts.update({prefix + k: v for k, v in out.parts.items()})
        x_fp, x_q = y_fp, y_q
        if state is not None:
            state.save(i, _flatten(prefix, out.parts), x_fp, x_q, result.block_logs)
        bar.set_postfix(block=i, rel_mse=f"{log['rel_mse_out']:.3g}")
    return result
