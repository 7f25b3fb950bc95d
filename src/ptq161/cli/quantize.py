"""``ptq161 quantize``: quantize a model block by block and save the result."""

from __future__ import annotations

import argparse
import dataclasses

from ..api import quantize
from ..config import PRESETS, CalibConfig, get_preset
from ..errors import PTQ161Error
from ..methods import METHODS, MethodConfig, get_method
from ..models import onloads
from ..nn import HEAD_FORMATS
from ..pipeline.e2e import E2EConfig
from .common import (
    add_config_options,
    add_data_dir,
    add_device,
    add_dtype,
    add_load_options,
    add_max_memory,
    add_method_options,
    config_flags,
    config_from_args,
    load_options,
    method_config,
    options_of,
    positive_int,
    torch_dtype,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "quantize",
        epilog="methods and their options: " + "; ".join(f"{name}: {options_of(name)}" for name in sorted(METHODS)),
        help="quantize a model block by block (PTQ1.61 by default)",
        description="Quantize MODEL block by block and save a model directory that `ptq161 ppl` and "
        "`ptq161 info` read. Presets: " + "; ".join(f"{k}: {v.describe()}" for k, v in PRESETS.items()),
    )
    p.add_argument("model", help="smollm2-135m, a local model directory or a hub id")
    p.add_argument("--method", default="ptq161", help="quantization method (default: ptq161); see the list below")
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="budget preset (default: cpu)")
    p.add_argument("--output", help="output directory (default: ptq161-out/MODEL-METHOD-PRESET)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    head = p.add_mutually_exclusive_group()
    head.add_argument(
        "--head",
        choices=HEAD_FORMATS,
        help="format of the embedding and lm_head of a packed result: int8 (per-row; the default for packed "
        "methods: smaller, decodes faster, +0.15%% WikiText-2 perplexity on the cpu-preset smollm2-135m), int4 "
        "(groups of 64, 4.5 bits; smaller still, see benchmarks/results/heads.md for its cost) or fp32",
    )
    head.add_argument("--int8-head", dest="head", action="store_const", const="int8", help="same as --head int8")
    head.add_argument("--fp32-head", dest="head", action="store_const", const="fp32", help="same as --head fp32")
    p.add_argument(
        "--calib",
        help="calibration corpus: wikitext2, c4, wiki-sample, text:PATH, or a mix taking windows from each in turn, "
        "e.g. wikitext2+c4 (default: wikitext2)",
    )
    p.add_argument("--nsamples", type=positive_int, help="calibration windows (default: from the preset)")
    p.add_argument("--calib-seqlen", type=positive_int, help="tokens per calibration window (default: preset)")
    p.add_argument("--seed", type=int, default=2, help="calibration sampling seed (default: 2, as the paper)")
    add_method_options(p)
    add_config_options(p, E2EConfig, "end-to-end stage (ptq161; beyond the paper)")
    add_data_dir(p)
    add_device(p)
    add_dtype(p)
    add_max_memory(p)
    add_load_options(p)
    p.set_defaults(func=run)


def settings(args: argparse.Namespace) -> tuple[MethodConfig, CalibConfig, E2EConfig]:
    """(method config, calibration, end-to-end settings) from the preset, overridden by the flags given.

    The preset's end-to-end steps apply only to methods that have the stage.
    """
    preset = get_preset(args.preset)
    method_cls = get_method(args.method)
    cfg = method_config(args, method_cls, preset.method_defaults())
    has_stage = method_cls(cfg).trains_end_to_end
    e2e_default = preset.e2e_steps if has_stage else 0
    calib = CalibConfig(
        dataset=args.calib,
        nsamples=args.nsamples or preset.nsamples,
        seqlen=args.calib_seqlen or preset.seqlen,
        seed=args.seed,
    )
    e2e = config_from_args(args, E2EConfig, {**dict(preset.e2e_settings), "steps": e2e_default})
    if not e2e.steps:  # an end-to-end setting without the stage would be silently ignored
        given = [
            flag
            for flag, name, *_ in config_flags(E2EConfig)
            if name != "steps" and getattr(args, name, None) is not None
        ]
        if given:
            why = "0 steps; --e2e-steps N turns it on" if has_stage else f"method '{args.method}' has no such stage"
            raise PTQ161Error(f"{', '.join(given)}: end-to-end setting(s) while the end-to-end stage is off ({why})")
    return cfg, calib, e2e


def run(args: argparse.Namespace) -> int:
    """Quantize, save, print a summary."""
    cfg, calib, e2e = settings(args)
    preset_e2e = e2e.steps and getattr(args, "steps", None) is None  # not asked for with --e2e-steps
    if preset_e2e and onloads(args.model, torch_dtype(args.dtype), args.max_memory):
        e2e = dataclasses.replace(e2e, steps=0)
        print(
            f"{args.model} is over half the memory budget: block onloading, without the preset's end-to-end stage "
            "(it needs the whole model; --max-memory to raise the budget)"
        )
    output = args.output or f"ptq161-out/{args.model.rstrip('/').replace('/', '_')}-{args.method}-{args.preset}"
    res = quantize(
        args.model,
        args.method,
        method_config=cfg,
        calib=calib,
        output=output,
        resume=args.resume,
        data_dir=args.data_dir,
        device=args.device,
        dtype=torch_dtype(args.dtype),
        max_memory=args.max_memory,
        head=args.head,
        e2e=e2e,
        **load_options(args),
    )
    bits = res.meta["bits"]
    print(f"saved {output}")
    print(
        f"method {args.method}, preset {args.preset}: {calib.nsamples} x {calib.seqlen} tokens from "
        f"{res.meta['calibration_source']}, seed {calib.seed}"
    )
    print(
        f"bits/weight (decoder linears): stored {bits['stored_bits_per_weight']:.4f}, "
        f"paper formula {bits['paper_bits_per_weight']:.4f}"
    )
    print(f"time {res.meta['seconds']:.1f} s, peak RSS {res.meta['peak_rss_mb']:.0f} MiB")
    print(f"evaluate with: ptq161 ppl {output}")
    return 0
