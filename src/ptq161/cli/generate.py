"""``ptq161 generate``: greedy continuation of a prompt."""

from __future__ import annotations

import argparse
import sys

import torch

from ..api import load
from ..errors import PTQ161Error
from ..runtime import greedy_generate
from ..runtime.generate import decode_path
from .common import add_device, add_load_options, load_options, positive_int


def add_engine_option(p: argparse.ArgumentParser) -> None:
    """``--engine`` (shared with ``bench``)."""
    p.add_argument(
        "--engine",
        choices=["auto", "on", "off"],
        default="auto",
        help="decode packed LLaMA-layout models with the fused numba engine (auto: when it applies; "
        "off: the model's own forward every step)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("generate", help="greedy text generation with a model or a quantized directory")
    p.add_argument("model", help="a ptq161 output directory, smollm2-135m, a local model directory or a hub id")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate (default: 32)")
    add_engine_option(p)
    add_device(p)
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the prompt and its continuation (timings on stderr)."""
    model, tok = load(args.model, device=args.device, **load_options(args))
    ids = tok(args.prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise PTQ161Error("the prompt is empty")
    with torch.no_grad():
        new, prefill_s, decode_s = greedy_generate(model, ids.to(args.device), args.max_new_tokens, args.engine)
    print(args.prompt + tok.decode(new, skip_special_tokens=True))
    print(
        f"[{len(new)} tokens; prompt of {ids.shape[1]} tokens in {prefill_s:.2f} s (first call: includes loading "
        f"the kernels); decode {(len(new) - 1) / max(decode_s, 1e-9):.1f} tok/s through "
        f"{decode_path(model, args.engine)}; `ptq161 bench` measures warm speeds]",
        file=sys.stderr,
    )
    return 0
