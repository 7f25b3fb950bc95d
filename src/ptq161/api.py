"""Public entry points: load models, quantize them with a recipe, preprocess, evaluate perplexity."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase as Tokenizer

from .data import default_eval_corpus, eval_tokens
from .data.corpora import check_eval_name
from .eval.perplexity import PerplexityResult, perplexity
from .models import LazyModel, load_model, load_model_lazy, placement_for
from .models.placed import PLACEMENT_NAMES
from .pipeline.output_dir import convert_output
from .pipeline.preprocess import LoRAConfig, PreprocessResult, preprocess
from .pipeline.quantize import QuantizeResult
from .pipeline.quantize import quantize as run_recipe
from .pipeline.recipe import Recipe, recipe_names, resolve_recipe

__all__ = [
    "LoRAConfig",
    "PreprocessResult",
    "QuantizeResult",
    "Recipe",
    "convert",
    "evaluate_perplexity",
    "load",
    "load_model",
    "load_model_lazy",
    "preprocess",
    "quantize",
    "recipe_names",
    "resolve_recipe",
]

log = logging.getLogger(__name__)


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


def quantize(
    model: str | Path | nn.Module,
    recipe: str | Path | Recipe | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    output: str | Path | None = None,
    resume: bool = False,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_memory: int | None = None,
    progress: bool = True,
    verify: bool = True,
    trust_remote_code: bool = False,
    placement: str = "auto",
    **overrides: Any,
) -> QuantizeResult:
    """Quantize ``model`` with ``recipe`` (default "cpu"; ``ptq161 recipes`` lists them) and ``overrides``.

    ``model``: a model spec ("smollm2-135m", a model directory, a hub id) or an ``nn.Module`` with its
    ``tokenizer`` (quantized in place). ``recipe``: a shipped recipe's name, a recipe TOML file, an
    earlier output's ``ptq161.json`` (or its directory) to repeat that run, or a ``Recipe``.
    ``overrides``: settings by flat name, e.g. ``epochs=2, calib_nsamples=16, e2e_steps=0, head="fp32",
    method="gptq", bits=3`` (``Recipe.settings()`` lists a recipe's). The command line
    ``ptq161 quantize MODEL --recipe R --epochs 2 ...`` resolves the same way.

    When a model spec does not fit ``max_memory`` (block onloading, or accelerate placement on a GPU)
    and the end-to-end stage comes from a recipe name or file rather than an explicit ``e2e_steps``
    or ``Recipe``, the stage is dropped with a warning (logged) and the recorded recipe says so;
    otherwise it is refused. With ``output`` the result is saved (packed for PTQ1.61) with the
    resolved recipe in ``ptq161.json``.
    See ``ptq161.pipeline.quantize.quantize`` for the rest.
    """
    rec = resolve_recipe(recipe, **overrides)
    spec = None if isinstance(model, nn.Module) else str(model)
    from_file = not isinstance(recipe, Recipe) and overrides.get("e2e_steps") is None  # not asked for explicitly
    chosen = placement_for(spec, device, dtype, max_memory, placement) if spec else "whole"
    if rec.e2e.steps and from_file and chosen != "whole":
        log.warning(
            "%s does not fit the memory budget: %s, without the recipe's end-to-end stage "
            "(it needs the whole model; a larger --max-memory keeps it)",
            spec,
            PLACEMENT_NAMES[chosen],
        )
        rec = dataclasses.replace(
            rec,
            e2e=dataclasses.replace(rec.e2e, steps=0),
            description=f"{rec.description} End-to-end stage dropped: {PLACEMENT_NAMES[chosen]}.",
        )
    return run_recipe(
        model,
        rec,
        tokenizer=tokenizer,
        output=output,
        resume=resume,
        data_dir=data_dir,
        device=device,
        dtype=dtype,
        progress=progress,
        max_memory=max_memory,
        verify=verify,
        trust_remote_code=trust_remote_code,
        placement=placement,
    )
