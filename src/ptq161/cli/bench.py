"""``ptq161 bench``: prefill and decode tokens/s of a model, optionally against another one."""

from __future__ import annotations

import argparse
import sys

from ..api import load
from ..eval.report import markdown_table
from ..runtime import measure_speed
from ..runtime.generate import decode_path
from ..utils import atomic_write_json, peak_rss_mb
from .common import add_device, add_load_options, load_options, positive_int
from .generate import add_engine_option

PROMPT_TEXT = "The history of the city begins in the early middle ages, when " * 64


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("bench", help="batch-1 prefill and decode speed (optionally against another model)")
    p.add_argument("model", help="a ptq161 output directory or any model spec")
    p.add_argument("--against", help="a second model to compare with in the same process, e.g. smollm2-135m")
    p.add_argument("--prompt-tokens", type=positive_int, default=128, help="prompt length (default: 128)")
    p.add_argument("--new-tokens", type=positive_int, default=64, help="tokens to decode (default: 64)")
    p.add_argument("--json", help="write the timings to this JSON file")
    add_engine_option(p)
    add_device(p)
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Time each model and print a table."""
    rows, results = [], {}
    for spec in [args.model, *([args.against] if args.against else [])]:
        model, tok = load(spec, device=args.device, **load_options(args))
        ids = tok(PROMPT_TEXT, return_tensors="pt").input_ids[:, : args.prompt_tokens].to(args.device)
        r = measure_speed(model, ids, args.new_tokens, engine=args.engine)
        path = decode_path(model, args.engine, ids.shape[1] + args.new_tokens)
        results[spec] = {**r.to_dict(), "decode_path": path}
        print(f"{spec}: decoded through {path}", file=sys.stderr)
        rows.append(
            (
                spec,
                r.prompt_tokens,
                round(r.prefill_tokens_per_s, 1),
                r.new_tokens,
                round(r.decode_tokens_per_s, 2),
                "fused engine" if r.engine else "model forward",
            )
        )
        del model
    head = ["model", "prompt tokens", "prefill tok/s", "new tokens", "decode tok/s", "decode path"]
    print(markdown_table(head, rows))
    if args.against:
        a, b = results[args.model], results[args.against]
        print(
            f"decode speed-up {a['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x; "
            f"same greedy tokens as {args.against}: {a['tokens'] == b['tokens']} "
            "(a quantized model and its FP original usually differ)"
        )
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MiB")
    if args.json:
        atomic_write_json(args.json, results)
    return 0
