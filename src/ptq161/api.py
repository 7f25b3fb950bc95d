"""Public entry points: load models, quantize them block by block, evaluate perplexity."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase as Tokenizer

from . import artifact
from .calibration.driver import BlockState, fingerprint, quantize_blockwise
from .config import CalibConfig
from .data import calibration_windows, default_eval_corpus, eval_tokens
from .data.corpora import check_eval_name
from .errors import PTQ161Error
from .eval.perplexity import PerplexityResult, perplexity
from .methods.base import MethodConfig, get_method
from .models import get_adapter, load_model
from .utils import peak_rss_mb

__all__ = ["QuantizeResult", "evaluate_perplexity", "load", "load_model", "quantize"]


def load(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, Tokenizer]:
    """Load a ptq161 output directory (packed or dense) or any model spec: ``(model, tokenizer)``."""
    return load_model(str(path), device=device)


@dataclass
class QuantizeResult:
    """A finished quantization: the model (fake-quant weights in place), where it was saved, its metadata."""

    model: nn.Module
    tokenizer: Tokenizer
    output: Path | None
    meta: dict[str, Any]


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
    progress: bool = True,
    int8_head: bool = False,
) -> QuantizeResult:
    """Quantize ``model_spec`` with a registered method on the block-wise driver.

    With ``output``, progress is saved after every block and ``resume=True`` continues
    an interrupted run to a result identical to an uninterrupted one. PTQ1.61 results are
    saved packed (and the returned model is then the packed one); ``int8_head`` also stores
    the embedding and lm_head in 8 bits.
    """
    method_cls = get_method(method)
    cfg = method_config or method_cls.config_class()
    calib = calib or CalibConfig()
    out = Path(output) if output is not None else None
    if out is not None:
        artifact.check_output_dir(out, resume)
    model, tok = load_model(model_spec, device=device)
    max_ctx = getattr(model.config, "max_position_embeddings", None)
    if max_ctx is not None and calib.seqlen > max_ctx:
        raise PTQ161Error(f"calibration seqlen {calib.seqlen} exceeds the model's context of {max_ctx} tokens")
    windows, calib_source = calibration_windows(
        calib.dataset, tok, nsamples=calib.nsamples, seqlen=calib.seqlen, seed=calib.seed, data_dir=data_dir
    )
    settings = {"model": model_spec, "method": method, "config": cfg.to_dict(), "calibration": calib.to_dict()}
    state = BlockState(out, fingerprint(settings)) if out is not None else None
    t0 = time.perf_counter()
    impl = method_cls(cfg)
    res = quantize_blockwise(model, get_adapter(model), windows, impl, seed=calib.seed, state=state, progress=progress)
    meta = {
        **settings,
        "calibration_source": calib_source,
        "seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "bits": artifact.bits_report(impl, res.parts),
        "block_logs": res.block_logs,
    }
    if out is not None:
        packable = method == "ptq161" and getattr(cfg, "salient_bits", 0) == 4
        if int8_head and not packable:
            raise PTQ161Error("--int8-head needs the packed PTQ1.61 format (method ptq161)")
        artifact.write_artifact(out, model, tok, res.parts, {**meta, "int8_head": int8_head}, packable, int8_head)
    return QuantizeResult(model, tok, out, meta)


def evaluate_perplexity(
    model: nn.Module,
    tokenizer: Tokenizer,
    datasets: list[str] | None = None,
    *,
    seqlen: int = 2048,
    max_windows: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> list[PerplexityResult]:
    """Perplexity of ``model`` on each named dataset (default: WikiText-2 test, else the Wikipedia sample)."""
    names = datasets or [default_eval_corpus(data_dir)]
    for name in names:
        check_eval_name(name)
    results = []
    for name in names:
        ts = eval_tokens(name, tokenizer, seqlen=seqlen, data_dir=data_dir)
        results.append(
            perplexity(
                model,
                ts.tokens,
                seqlen=seqlen,
                max_windows=max_windows,
                dataset=name,
                source=ts.source,
                note=ts.note,
                progress=progress,
            )
        )
    return results
