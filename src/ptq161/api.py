"""Public entry points: load models, quantize them block by block, preprocess, evaluate perplexity."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase as Tokenizer

from .data import default_eval_corpus, eval_tokens
from .data.corpora import check_eval_name
from .eval.perplexity import PerplexityResult, perplexity
from .models import LazyModel, load_model, load_model_lazy
from .pipeline.output_dir import convert_output
from .pipeline.preprocess import LoRAConfig, PreprocessResult, preprocess
from .pipeline.quantize import QuantizeResult, quantize

__all__ = [
    "LoRAConfig",
    "PreprocessResult",
    "QuantizeResult",
    "convert",
    "evaluate_perplexity",
    "load",
    "load_model",
    "load_model_lazy",
    "preprocess",
    "quantize",
]


def load(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Tokenizer]:
    """Load a ptq161 output directory (packed or dense) or any model spec: ``(model, tokenizer)``.

    ``dtype`` is the compute dtype of the dense parts; packed layers keep their stored
    fp16 factors and compute in the input's dtype. ``verify`` checks the files against the
    sha256 recorded when they were written (``IntegrityError`` names a damaged file).
    ``trust_remote_code`` lets a model directory's own Python code run (refused otherwise)."""
    return load_model(str(path), device=device, dtype=dtype, verify=verify, trust_remote_code=trust_remote_code)


def evaluate_perplexity(
    model: nn.Module | LazyModel,
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


def convert(
    src: str | Path, output: str | Path, *, head: str = "int8", verify: bool = True, trust_remote_code: bool = False
) -> dict:
    """Rewrite the packed directory ``src`` (fp32 head) as ``output`` with its embedding and lm_head stored in
    ``head`` format: "int8" (per-row) or "int4" (grouped; ``ptq161.nn.heads``).

    The decoder blocks are copied unchanged, one module in memory at a time. Returns the new
    directory's ``ptq161.json`` (``head``, ``converted_from``).
    """
    return convert_output(src, output, head=head, verify=verify, trust_remote_code=trust_remote_code)
