"""``ptq161 preprocess``: quantize, train a restorative LoRA, merge, save a plain model directory."""

from __future__ import annotations

import argparse
import dataclasses

from ..api import preprocess
from ..methods import METHODS
from ..pipeline.preprocess import PREPROCESS_PRESETS, preset_settings
from ..pipeline.recipe import resolve_recipe
from .common import (
    add_data_dir,
    add_device,
    add_dtype,
    add_load_options,
    add_setting_options,
    load_options,
    non_negative_int,
    overrides_from_args,
    positive_int,
    torch_dtype,
)

# LoRA flag -> LoRAConfig field (flags whose name differs from the field are mapped here)
_LORA_FIELDS = {"lora_seqlen": "seqlen", "lora_seed": "seed"}
_LORA_FLAGS = ("steps", "rank", "alpha", "dropout", "lr", "warmup", "schedule", "data", "save_every", *_LORA_FIELDS)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "preprocess",
        help="quantization preprocessing: restorative LoRA on the quantized model, merged into a new model",
        description="Quantize MODEL (PTQ1.61 by default), train a LoRA on the quantized model with the causal-LM "
        "loss on pretraining-like text (not an evaluation split), merge it (W' = W_hat + alpha/r * B A) and save a "
        "plain model directory that `ptq161 quantize` accepts. Defaults: the reference recipe (r 64, alpha 16, "
        "dropout 0.1, q/k/v/gate/up/down, AdamW lr 1e-4, cosine, warm-up). Presets: "
        + "; ".join(
            f"{k}: first pass recipe '{v.recipe}', {v.steps} steps x {v.seqlen} tokens ({v.why})"
            for k, v in PREPROCESS_PRESETS.items()
        ),
    )
    p.add_argument("model", help="smollm2-135m, a local model directory or a hub id")
    p.add_argument("--output", required=True, help="output directory (a plain Hugging Face model directory)")
    p.add_argument("--preset", default="cpu", choices=list(PREPROCESS_PRESETS), help="budget preset (default: cpu)")
    p.add_argument("--recipe", help="recipe of the first quantization pass (default: the preset's; see ptq161 recipes)")
    p.add_argument("--method", choices=sorted(METHODS), help="first-pass method (default: the recipe's)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --output")
    g = p.add_argument_group("LoRA options")
    g.add_argument("--steps", type=positive_int, help="optimizer steps (default: from the preset)")
    g.add_argument("--lora-seqlen", type=positive_int, help="tokens per training sequence (default: preset)")
    g.add_argument("--rank", type=positive_int, help="LoRA rank (default 64)")
    g.add_argument("--alpha", type=positive_int, help="LoRA alpha (default 16; merge factor alpha/rank)")
    g.add_argument("--dropout", type=float, help="LoRA dropout (default 0.1)")
    g.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-4)")
    g.add_argument("--warmup", type=non_negative_int, help="warm-up steps (default: preset, at most steps/10)")
    g.add_argument("--schedule", choices=["cosine", "linear", "constant"], help="lr schedule (default cosine)")
    g.add_argument("--data", help="training text: c4 (C4 train sample, default), wikitext2:valid, text:PATH")
    g.add_argument("--lora-seed", type=int, help="seed of the LoRA init, dropout and data order (default 0)")
    g.add_argument("--save-every", type=positive_int, help="checkpoint every N steps (default 50)")
    flags = add_setting_options(p, e2e=False)
    add_data_dir(p)
    add_device(p)
    add_dtype(p)
    add_load_options(p)
    p.set_defaults(func=run, setting_flags=flags)


def run(args: argparse.Namespace) -> int:
    """Preprocess and print a summary."""
    recipe_name, lora = preset_settings(args.preset)
    settings = overrides_from_args(args, args.setting_flags)
    recipe = resolve_recipe(args.recipe or recipe_name, method=args.method, **settings)
    overrides = {_LORA_FIELDS.get(k, k): getattr(args, k) for k in _LORA_FLAGS if getattr(args, k) is not None}
    if "steps" in overrides:
        lora = lora.with_steps(overrides.pop("steps"))
    lora = dataclasses.replace(lora, **overrides)
    res = preprocess(
        args.model,
        args.output,
        recipe=recipe,
        lora=lora,
        resume=args.resume,
        data_dir=args.data_dir,
        device=args.device,
        dtype=torch_dtype(args.dtype),
        **load_options(args),
    )
    losses = res.meta["losses"]
    k = max(1, len(losses) // 10)
    print(f"saved {res.output} (a plain model directory: quantize it like any model)")
    print(
        f"first pass {recipe.method} ({recipe.calib.nsamples} x {recipe.calib.seqlen} tokens); "
        f"LoRA r={lora.rank} alpha={lora.alpha} on {res.meta['lora_data_source']}: "
        f"{lora.steps} steps x {lora.batch_size} x {lora.seqlen} tokens"
    )
    print(f"loss: first {k} steps {sum(losses[:k]) / k:.3f} -> last {k} steps {sum(losses[-k:]) / k:.3f}")
    print(f"time {res.meta['seconds']:.1f} s, peak RSS {res.meta['peak_rss_mb']:.0f} MiB")
    return 0
