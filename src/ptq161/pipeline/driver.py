"""The one block-wise driver every method runs on.

Captures the first block's inputs for the calibration windows, then for each decoder
block in order: run the original block on the FP stream (recording input statistics of
its linears), let the method quantize the block, run the quantized block on the
quantized stream, and save the state atomically so that ``resume`` continues exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration import capture_block_inputs, record_input_stats, run_block
from ..calibration.capture import module_device
from ..errors import check_finite
from ..methods import BlockContext, Method, Parts
from ..models import Adapter
from ..models.lazy import LazyModel
from ..models.placed import PlacedModel
from .state import RunState


@dataclass
class DriverResult:
    """Parts of every quantized linear, keyed by its full module path, and per-block logs."""

    parts: dict[str, Parts] = field(default_factory=dict)
    block_logs: list[dict[str, Any]] = field(default_factory=list)


def flatten_parts(parts: dict[str, Parts], prefix: str = "") -> dict[str, torch.Tensor]:
    """``{layer: {part: tensor}}`` as one flat ``{prefix + "layer::part": tensor}`` dict (for safetensors)."""
    return {f"{prefix}{name}::{k}": v for name, p in parts.items() for k, v in p.items()}


def unflatten_parts(flat: dict[str, torch.Tensor]) -> dict[str, Parts]:
    """Inverse of ``flatten_parts``."""
    out: dict[str, Parts] = {}
    for key, v in flat.items():
        layer, _, part = key.rpartition("::")
        out.setdefault(layer, {})[part] = v
    return out


def _resume(state: RunState) -> tuple[int, list[dict], dict[str, Parts], torch.Tensor | None, torch.Tensor | None]:
    """(blocks done, logs, parts, x_fp, x_q) from the saved state; zeros/None when there is nothing to resume."""
    progress = state.progress()
    if progress is None:
        return 0, [], {}, None, None
    done = progress["done"]
    parts: dict[str, Parts] = {}
    for i in range(done):
        parts.update(unflatten_parts(state.load(f"block_{i:04d}")))
    streams = state.load(f"streams_{done:04d}")
    return done, progress["logs"], parts, streams["x_fp"], streams["x_q"]


def _rel_mse(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y - ref).float().pow(2).sum() / ref.float().pow(2).sum().clamp(min=1e-30)).item()


def streams_bytes(nsamples: int, seqlen: int, hidden: int, dtype: torch.dtype) -> int:
    """Bytes of the driver's activation streams at their peak: x_fp, x_q, y_fp, y_q [nsamples, seqlen, hidden]."""
    return 4 * nsamples * seqlen * hidden * (torch.finfo(dtype).bits // 8)


def streams_placement(device: str | torch.device, need: int) -> torch.device:
    """The model's device when the streams (``need`` bytes) take at most half of its free memory, else the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    free, _total = torch.cuda.mem_get_info(device)
    return device if need <= free // 2 else torch.device("cpu")


@torch.no_grad()
def quantize_blockwise(
    model: nn.Module,
    adapter: Adapter,
    windows: torch.Tensor,
    method: Method,
    *,
    state: RunState | None = None,
    progress: bool = True,
    lazy: LazyModel | PlacedModel | None = None,
    streams_device: str | torch.device | None = None,
) -> DriverResult:
    """Quantize every decoder block of ``model`` in place with ``method``.

    windows: int64 [N, seqlen] calibration tokens. Only one block's weights are changed
    at a time; the two activation streams [N, seqlen, d] stay live. With ``state`` the
    run saves itself after every block and continues from the last saved block. With
    ``lazy`` (block onloading or accelerate placement; ``model`` is ``lazy.model``) each block is loaded
    before its turn (on the device it runs on) and released after it: its quantized form lives on in the
    returned parts only.
    ``streams_device``: where the activation streams live (default: the model's device; the
    CPU when a GPU is too small for them, see ``streams_placement``).
    """
    layers = adapter.decoder_layers(model)
    if lazy is not None:
        lazy.load_module(adapter.embed)
    x_fp, calls = capture_block_inputs(model, adapter, windows)
    if streams_device is not None:
        x_fp = x_fp.to(streams_device)
    if lazy is not None:
        lazy.release_module(adapter.embed)
    x_q = x_fp.clone()
    result = DriverResult()
    start = 0
    if state is not None:
        start, result.block_logs, result.parts, s_fp, s_q = _resume(state)
        if start:
            x_fp, x_q = s_fp.to(x_fp.device), s_q.to(x_q.device)
            for path, parts in result.parts.items() if lazy is None else ():
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
        block = layers[i] if lazy is None else lazy.load_block(i)
        linears = adapter.block_linears(block)
        call = calls[i] if lazy is None else calls[i].to(module_device(block))  # a placed block's own device
        with record_input_stats(linears) as stats:
            y_fp = run_block(block, x_fp, call)

        def report(i: int = i, **kw: object) -> None:
            bar.set_postfix(block=i, **kw)

        ctx = BlockContext(
            i, block, linears, x_fp, x_q, y_fp, stats, call, report=report,
            groups=adapter.linear_groups, absorbers=dict(adapter.scale_absorbers),
        )  # fmt: skip
        out = method.quantize_block(ctx)
        prefix = f"{adapter.layers}.{i}."
        for name, parts in out.parts.items():  # nothing of this block is saved when one number is off
            for key, t in parts.items():
                check_finite(t, f"block {i}: {prefix}{name} {key}")
        y_q = run_block(block, x_q, call)
        check_finite(y_q, f"block {i}: the quantized block's output")
        log = {"block": i, "rel_mse_out": _rel_mse(y_q, y_fp), **out.log, "seconds": time.perf_counter() - t0}
        result.block_logs.append(log)
        result.parts.update({prefix + k: v for k, v in out.parts.items()})
        x_fp, x_q = y_fp, y_q
        if state is not None:
            state.save(f"block_{i:04d}", flatten_parts(out.parts, prefix))
            state.save(f"streams_{i + 1:04d}", {"x_fp": x_fp, "x_q": x_q})
            state.commit({"done": i + 1, "logs": result.block_logs}, drop=[f"streams_{i:04d}"])
        if lazy is not None:
            lazy.release_block(i)
        bar.set_postfix(block=i, rel_mse=f"{log['rel_mse_out']:.3g}")
    return result
