"""Quantize a model end to end: load, sample calibration windows, run the block-wise driver, write the output."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase as Tokenizer

from ..calibration.capture import module_device
from ..data import calibration_windows
from ..errors import PTQ161Error
from ..eval.report import run_metadata
from ..methods import Method, get_method
from ..methods.block_training import resolve_compile
from ..models import LazyModel, get_adapter, load_model, load_model_lazy, load_model_placed, placement_for
from ..models.placed import OFFLOAD_DIR, PLACEMENT_NAMES, PlacedModel, device_map_summary
from ..parallel import World
from ..utils import output_lock, peak_rss_mb
from . import output_dir
from .driver import DriverResult, quantize_blockwise, streams_bytes, streams_placement
from .e2e import E2EConfig, e2e_targets, train_end_to_end
from .recipe import Recipe
from .state import RunState

log = logging.getLogger(__name__)


@dataclass
class QuantizeResult:
    """A finished quantization: the model (fake-quant weights in place), where it was saved, its metadata,
    and the stored parts of every quantized linear (keyed by module path)."""

    model: nn.Module | LazyModel
    tokenizer: Tokenizer
    output: Path | None
    meta: dict[str, Any]
    parts: dict[str, Any] = field(default_factory=dict)


def quantize(
    model: str | Path | nn.Module,
    recipe: Recipe,
    *,
    tokenizer: Tokenizer | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    max_memory: int | None = None,
    verify: bool = True,
    trust_remote_code: bool = False,
    placement: str = "auto",
) -> QuantizeResult:
    """Run ``recipe`` on ``model`` (a model spec, a model directory, or an ``nn.Module`` with its ``tokenizer``).

    The block-wise driver runs the recipe's method; with an end-to-end stage, the FP model's
    outputs on the calibration windows are recorded first and the stage runs after the block stage.
    With ``output``, progress is saved after every block and ``resume=True`` continues
    an interrupted run to a result identical to an uninterrupted one. Methods with a packed
    format (PTQ1.61) are saved packed, and the returned model is then the packed one, with the
    embedding and lm_head in ``recipe.head``. ``device`` and ``dtype`` are where and in which dtype
    a loaded model and the calibration streams live (the methods' own arithmetic is float32); an
    ``nn.Module`` is quantized in place where it is. ``verify`` checks the model's files against
    their recorded sha256; ``trust_remote_code`` lets a model directory's own Python code run.

    A model spec whose weights take more than half of ``max_memory`` bytes (default: the RAM
    available now) is block-onloaded (``ptq161.models.lazy``): one decoder block in memory at a
    time, written to ``output`` (required then) as it is finished; an end-to-end stage is
    refused then (it needs the whole model). The returned model is then a ``LazyModel`` of the
    output directory (``ptq161.evaluate_perplexity`` takes it).

    ``placement`` ("auto", "whole", "onload", "accelerate"; ``ptq161.models.placed.choose_placement``):
    "auto" block-onloads on the CPU as above, and on a GPU lets accelerate place a model that does not
    fit it (GPUs, then ``max_memory`` of CPU RAM, then an offload folder in ``output``, removed at the
    end), handing the driver one decoder layer at a time on the device it runs on.
    """
    impl = get_method(recipe.method)(recipe.method_config)
    head, calib, e2e = recipe.head, recipe.calib, recipe.e2e
    if isinstance(model, nn.Module) and tokenizer is None:
        raise PTQ161Error("quantizing an nn.Module needs its tokenizer (tokenizer=...)")
    model_spec = str(model) if not isinstance(model, nn.Module) else module_name(model)
    out = Path(output) if output is not None else None
    world = World.current()  # under torchrun: the end-to-end stage is shared by the ranks, rank 0 writes
    with output_lock(out if world.main else None), contextlib.ExitStack() as cleanup:  # one run per output
        if out is not None and world.main:
            output_dir.check_output_dir(out, resume)
        world.barrier()  # the other ranks read the state only once rank 0 has checked the directory
        waiting = world.waiting_group()  # made by every rank now: later, rank 0 runs the block stage alone
        lazy: LazyModel | PlacedModel | None = None
        chosen = "whole"
        if isinstance(model, nn.Module):
            tok, device = tokenizer, str(module_device(model))
        else:
            chosen = placement_for(model_spec, device, dtype, max_memory, placement)
        if chosen != "whole":
            if e2e.steps:
                why = "the model does not fit the memory budget" if placement == "auto" else f"--placement {placement}"
                raise PTQ161Error(
                    f"{why} ({PLACEMENT_NAMES[chosen]}), and the end-to-end stage needs the model whole: pass "
                    "--e2e-steps 0" + (" or a larger --max-memory" if placement == "auto" else " or --placement auto")
                )
            if out is None:
                raise PTQ161Error(
                    f"{PLACEMENT_NAMES[chosen]} writes each block as it is finished: give an output directory"
                )
            if world.size > 1:
                raise PTQ161Error(f"{PLACEMENT_NAMES[chosen]} runs in one process: start it without torchrun")
            log.info("%s: %s", model_spec, PLACEMENT_NAMES[chosen])
        if chosen == "onload":
            lazy, tok = load_model_lazy(
                model_spec, device=device, dtype=dtype, verify=verify, trust_remote_code=trust_remote_code
            )
            model = lazy.model
        elif chosen == "accelerate":
            offload_dir = out / OFFLOAD_DIR
            cleanup.callback(shutil.rmtree, offload_dir, ignore_errors=True)  # also when the run fails
            lazy, tok = load_model_placed(
                model_spec,
                offload_dir=offload_dir,
                device=device,
                dtype=dtype,
                max_memory=max_memory,
                verify=verify,
                trust_remote_code=trust_remote_code,
            )
            model = lazy.model
            log.info("accelerate placement of %s: %s", model_spec, device_map_summary(model.hf_device_map))
        elif not isinstance(model, nn.Module):
            model, tok = load_model(
                model_spec, device=device, dtype=dtype, verify=verify, trust_remote_code=trust_remote_code
            )
        max_ctx = getattr(model.config, "max_position_embeddings", None)
        if max_ctx is not None and calib.seqlen > max_ctx:
            raise PTQ161Error(f"calibration seqlen {calib.seqlen} exceeds the model's context of {max_ctx} tokens")
        n_e2e = (e2e.windows or calib.nsamples) if e2e.steps else 0
        windows, calib_source = calibration_windows(  # the first nsamples: the block stage's, then the e2e's
            calib.dataset,
            tok,
            nsamples=max(calib.nsamples, n_e2e),
            seqlen=calib.seqlen,
            seed=calib.seed,
            data_dir=data_dir,
        )
        e2e_windows, windows = windows[:n_e2e], windows[: calib.nsamples]
        cfg = recipe.method_config
        settings = {
            "model": model_spec,
            "method": recipe.method,
            "config": cfg.to_dict(),
            "calibration": calib.to_dict(),
        }
        settings["dtype"] = str(dtype).removeprefix("torch.")  # a resumed run must keep it; the device may change
        if e2e.steps:
            settings["e2e"] = e2e.to_dict()
        state = RunState(out, settings, writes=world.main) if out is not None else None
        t0 = time.perf_counter()
        teacher = None
        if e2e.steps:  # from the FP model, before the block stage changes it
            targets_state = RunState(out, settings, stage="e2e-targets", writes=world.main) if out is not None else None
            e2e_windows, teacher = e2e_targets(model, e2e_windows, e2e, calib.seed, targets_state, progress)
        need = streams_bytes(calib.nsamples, calib.seqlen, model.config.hidden_size, dtype)
        streams = streams_placement(device, need)
        if world.main:  # the block stage runs once, on rank 0; the other ranks wait for its parts
            res = quantize_blockwise(
                model, get_adapter(model), windows, impl, state=state, progress=progress, lazy=lazy,
                streams_device=streams,
            )  # fmt: skip
        else:
            log.info("rank %d of %d: waiting for rank 0's block stage", world.rank, world.size)
            res = DriverResult()
        world.wait_for_main(waiting)
        if not e2e.steps:  # (the end-to-end stage starts every rank from rank 0's parts itself)
            res.parts = world.broadcast(res.parts)
        e2e_log = None
        if e2e.steps:
            e2e_state = RunState(out, settings, stage="e2e", writes=world.main) if out is not None else None
            res.parts, e2e_log = train_end_to_end(
                model, impl, res.parts, e2e_windows, teacher, e2e, e2e_state, progress
            )
        meta = {
            **settings,
            "recipe": recipe.to_dict(),
            "machine": machine_record(device, impl, e2e),
            "device": str(device),
            "streams_device": str(streams),
            "calibration_source": calib_source,
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(),
            "bits": output_dir.bits_report(impl, res.parts),
            "block_logs": res.block_logs,
            **({"e2e_log": e2e_log} if e2e_log is not None else {}),
        }
        meta["ranks"] = world.size
        if not world.main:  # rank 0 writes the result
            out = None
        meta["head"] = head if out is not None else "fp32"  # only a written output has a head format
        meta["block_onloading"] = chosen == "onload"
        meta["placement"] = chosen
        if isinstance(lazy, PlacedModel):
            meta["device_map"] = device_map_summary(lazy.model.hf_device_map)
            shutil.rmtree(out / OFFLOAD_DIR, ignore_errors=True)
            lazy = load_model_lazy(  # the output is written from the source's safetensors, as onloading does
                model_spec, device="cpu", dtype=dtype, verify=False, trust_remote_code=trust_remote_code
            )[0]
        if lazy is not None:  # written one module at a time, from the source's safetensors and the parts
            output_dir.write_output_lazy(out, lazy, tok, impl, res.parts, meta, head)
            # the directory this call just wrote and hashed: reading it back needs no second sha256 pass
            lazy_out = load_model_lazy(
                str(out), device=device, dtype=dtype, verify=False, trust_remote_code=trust_remote_code
            )[0]
            return QuantizeResult(lazy_out, tok, out, meta, res.parts)
        if out is not None:
            where = module_device(model)
            output_dir.write_output(out, model, tok, impl, res.parts, meta, head)
            model.to(where)  # the packed modules are built on the CPU
        return QuantizeResult(model, tok, out, meta, res.parts)


def machine_record(device: str, impl: Method, e2e: E2EConfig) -> dict[str, Any]:
    """The machine, library versions and the code paths the run took on it (results can differ between them)."""
    md = run_metadata()
    dev = torch.device(device)
    paths = impl.code_paths(dev)
    if e2e.steps:
        paths["e2e_compile"] = str(resolve_compile(e2e.compile, dev))
    return {**md["machine"], "versions": md["versions"], "device": str(dev), "code_paths": paths}


def module_name(model: nn.Module) -> str:
    """What a quantized ``nn.Module`` is recorded as: the name or path it was loaded from, else its class."""
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__
