"""Quantize a model end to end: load, sample calibration windows, run the block-wise driver, write the output."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase as Tokenizer

from ..config import CalibConfig
from ..data import calibration_windows
from ..errors import PTQ161Error
from ..methods import MethodConfig, get_method
from ..models import LazyModel, get_adapter, load_model, load_model_lazy, onloads
from ..nn import check_head_format
from ..utils import output_lock, peak_rss_mb
from . import output_dir
from .driver import quantize_blockwise, streams_bytes, streams_placement
from .e2e import E2EConfig, e2e_targets, train_end_to_end
from .state import RunState


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
    model_spec: str,
    method: str = "ptq161",
    *,
    method_config: MethodConfig | None = None,
    calib: CalibConfig | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    head: str | None = None,
    e2e: E2EConfig | None = None,
    max_memory: int | None = None,
    verify: bool = True,
    trust_remote_code: bool = False,
) -> QuantizeResult:
    """Quantize ``model_spec`` with a method from ``ptq161.methods.METHODS`` on the block-wise driver.

    With ``output``, progress is saved after every block and ``resume=True`` continues
    an interrupted run to a result identical to an uninterrupted one. Methods with a packed
    format (PTQ1.61) are saved packed, and the returned model is then the packed one;
    ``head`` is the format of a packed model's embedding and lm_head: "int8" (per-row, the default,
    None, when the method packs; measured on the cpu-preset smollm2-135m: WikiText-2 148.36 -> 148.58,
    +0.15 %, and on qwen2.5-coder-1.5b decode 3.50x -> 6.06x dense fp32; README, large_model.md),
    "int4" (grouped, ``ptq161.nn.int4``; results/heads.md) or "fp32". ``device`` and ``dtype``
    are where and in which dtype the model and the calibration streams live (the methods'
    own arithmetic is float32); the returned model is on ``device``. ``e2e`` (steps > 0) adds the
    end-to-end stage after the block stage (``ptq161.pipeline.e2e``).

    A model whose weights take more than half of ``max_memory`` bytes (default: the RAM
    available now) is block-onloaded (``ptq161.models.lazy``): one decoder block in memory at a
    time, written to ``output`` (required then) as it is finished. The end-to-end stage needs
    the whole model and is refused then. The returned model is then a ``LazyModel`` of the
    output directory (``ptq161.evaluate_perplexity`` takes it). ``verify`` checks the model's
    files against their recorded sha256 before reading them. ``trust_remote_code``
    lets a model directory's own Python code run (refused otherwise).
    """
    method_cls = get_method(method)
    cfg = method_config or method_cls.config_class()
    impl = method_cls(cfg)
    if head is None:
        head = "int8" if impl.packs else "fp32"
    if check_head_format(head) != "fp32" and not impl.packs:
        raise PTQ161Error(f"--head {head} needs a packed format; method '{method}' with these settings has none")
    calib = calib or CalibConfig()
    e2e = e2e or E2EConfig()
    if e2e.steps and not impl.trains_end_to_end:
        raise PTQ161Error(f"method '{method}' with these settings has no end-to-end stage (--e2e-steps)")
    out = Path(output) if output is not None else None
    with output_lock(out):  # one run at a time per output directory
        if out is not None:
            output_dir.check_output_dir(out, resume)
        lazy = None
        if onloads(model_spec, dtype, max_memory):
            if e2e.steps:
                raise PTQ161Error(
                    "the model does not fit the memory budget (block onloading), and the end-to-end stage needs it "
                    "whole: pass --e2e-steps 0 or a larger --max-memory"
                )
            if out is None:
                raise PTQ161Error("block onloading writes each block as it is finished: give an output directory")
            lazy, tok = load_model_lazy(
                model_spec, device=device, dtype=dtype, verify=verify, trust_remote_code=trust_remote_code
            )
            model = lazy.model
        else:
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
        settings = {"model": model_spec, "method": method, "config": cfg.to_dict(), "calibration": calib.to_dict()}
        settings["dtype"] = str(dtype).removeprefix("torch.")  # a resumed run must keep it; the device may change
        if e2e.steps:
            settings["e2e"] = e2e.to_dict()
        state = RunState(out, settings) if out is not None else None
        t0 = time.perf_counter()
        teacher = None
        if e2e.steps:  # from the FP model, before the block stage changes it
            targets_state = RunState(out, settings, stage="e2e-targets") if out is not None else None
            e2e_windows, teacher = e2e_targets(model, e2e_windows, e2e, calib.seed, targets_state, progress)
        need = streams_bytes(calib.nsamples, calib.seqlen, model.config.hidden_size, dtype)
        streams = streams_placement(device, need)
        res = quantize_blockwise(
            model, get_adapter(model), windows, impl, state=state, progress=progress, lazy=lazy, streams_device=streams
        )
        e2e_log = None
        if e2e.steps:
            e2e_state = RunState(out, settings, stage="e2e") if out is not None else None
            res.parts, e2e_log = train_end_to_end(
                model, impl, res.parts, e2e_windows, teacher, e2e, e2e_state, progress
            )
        meta = {
            **settings,
            "device": str(device),
            "streams_device": str(streams),
            "calibration_source": calib_source,
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(),
            "bits": output_dir.bits_report(impl, res.parts),
            "block_logs": res.block_logs,
            **({"e2e_log": e2e_log} if e2e_log is not None else {}),
        }
        meta["head"] = head if out is not None else "fp32"  # only a written output has a head format
        meta["block_onloading"] = lazy is not None
        if lazy is not None:
            output_dir.write_output_lazy(out, lazy, tok, impl, res.parts, meta, head)
            # the directory this call just wrote and hashed: reading it back needs no second sha256 pass
            lazy_out = load_model_lazy(
                str(out), device=device, dtype=dtype, verify=False, trust_remote_code=trust_remote_code
            )[0]
            return QuantizeResult(lazy_out, tok, out, meta, res.parts)
        if out is not None:
            output_dir.write_output(out, model, tok, impl, res.parts, meta, head)
            model.to(device)  # the packed modules are built on the CPU
        return QuantizeResult(model, tok, out, meta, res.parts)
