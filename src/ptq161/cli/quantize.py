"""``ptq161 quantize``: quantize a model with a recipe and save the result."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..api import quantize
from ..methods import METHODS
from ..models import PLACEMENTS
from ..nn import HEAD_FORMATS
from ..parallel import joined
from ..pipeline.recipe import DEFAULT_RECIPE, recipe_names, resolve_recipe
from .common import (
    add_data_dir,
    add_device,
    add_dtype,
    add_load_options,
    add_max_memory,
    add_setting_options,
    load_options,
    overrides_from_args,
    torch_dtype,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "quantize",
        help="quantize a model with a recipe (PTQ1.61 by default)",
        description="Quantize MODEL with a recipe and save a model directory that `ptq161 ppl`, `ptq161 generate` "
        "and transformers read. The recipe (`ptq161 recipes`) sets every setting; a flag overrides one. "
        "ptq161.json in the output records the resolved recipe: `--recipe OUT/ptq161.json` repeats the run.",
    )
    p.add_argument("model", help="smollm2-135m, qwen2.5-coder-0.5b / -1.5b, a local model directory or a hub id")
    p.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"a shipped recipe ({', '.join(recipe_names())}; default {DEFAULT_RECIPE}), a recipe TOML file, or an "
        "earlier output's ptq161.json (or its directory) to repeat that run",
    )
    p.add_argument("--preset", dest="recipe", help=argparse.SUPPRESS)  # the earlier name
    p.add_argument("--method", choices=sorted(METHODS), help="quantization method (default: the recipe's)")
    flags = add_setting_options(p)
    out = p.add_argument_group("output")
    out.add_argument(
        "--head",
        choices=HEAD_FORMATS,
        help="format of a packed result's embedding and lm_head: int8 (per row), int4 (groups of 64, 4.5 bits) or "
        "fp32 (default: int8 when the method packs, else fp32; cost in benchmarks/results/heads.md); a tied "
        "model's head is stored once; int8-tied / int4-tied also make an untied model's lm_head table its "
        "embedding (for two tables that were one, e.g. from a GGUF file; cost in benchmarks/results/tied_head.md)",
    )
    out.add_argument("--int8-head", dest="head", action="store_const", const="int8", help=argparse.SUPPRESS)
    out.add_argument("--fp32-head", dest="head", action="store_const", const="fp32", help=argparse.SUPPRESS)
    out.add_argument("--output", help="output directory (default: ptq161-out/MODEL-METHOD-RECIPE)")
    out.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    machine = p.add_argument_group("model, data and machine")
    add_data_dir(machine)
    add_device(machine)
    add_dtype(machine)
    add_max_memory(machine)
    machine.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="auto",
        help="where the block stage keeps a model over the budget: onload (one decoder layer at a time from the "
        "safetensors files), accelerate (accelerate's device map over the GPUs, the --max-memory of RAM and an "
        "offload folder in --output), whole; auto (default): whole when it fits, else onload on the CPU and "
        "accelerate on a GPU. Both give the numbers of the whole model, without the end-to-end stage",
    )
    add_load_options(machine)
    p.set_defaults(func=run, setting_flags=flags)


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, by flat name: what ``ptq161.quantize`` takes as ``**overrides``."""
    overrides = overrides_from_args(args, args.setting_flags)
    overrides.update({k: getattr(args, k) for k in ("method", "head") if getattr(args, k) is not None})
    return overrides


def default_output(model: str, recipe: str, overrides: dict[str, Any]) -> str:
    """Where ``ptq161 quantize MODEL`` writes without ``--output``: ptq161-out/MODEL-METHOD-RECIPE."""
    method = resolve_recipe(recipe, **overrides).method
    return f"ptq161-out/{Path(model.rstrip('/')).name}-{method}-{Path(recipe.rstrip('/')).stem}"


def run(args: argparse.Namespace) -> int:
    """Quantize, save, print a summary."""
    overrides = cli_overrides(args)
    output = args.output or default_output(args.model, args.recipe, overrides)
    with joined(args.device) as world:  # under torchrun: the ranks share the end-to-end stage, rank 0 writes
        res = quantize(
            args.model,
            args.recipe,
            output=output,
            resume=args.resume,
            data_dir=args.data_dir,
            device=args.device,
            dtype=torch_dtype(args.dtype),
            max_memory=args.max_memory,
            placement=args.placement,
            progress=world.main,
            **load_options(args),
            **overrides,
        )
    if not world.main:
        return 0
    recipe, bits, calib = res.meta["recipe"], res.meta["bits"], res.meta["calibration"]
    print(f"saved {output}")
    print(
        f"recipe {recipe['name']}, method {recipe['method']}: {calib['nsamples']} x {calib['seqlen']} tokens from "
        f"{res.meta['calibration_source']}, seed {calib['seed']}, end-to-end steps {recipe['e2e']['steps']}"
    )
    print(
        f"bits/weight (decoder linears): stored {bits['stored_bits_per_weight']:.4f}, "
        f"paper formula {bits['paper_bits_per_weight']:.4f}"
    )
    print(f"time {res.meta['seconds']:.1f} s, peak RSS {res.meta['peak_rss_mb']:.0f} MiB")
    print(f"evaluate with: ptq161 ppl {output}")
    return 0
