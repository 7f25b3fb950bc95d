"""``ptq161 convert``: rewrite a packed directory with its embedding and lm_head in int8 or grouped int4."""

from __future__ import annotations

import argparse

from ..api import convert
from .common import add_load_options, load_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "convert",
        help="store a packed result's embedding and lm_head in int8 or int4 (what quantize --head writes), "
        "without quantizing again",
        description="Copy a packed `ptq161 quantize --fp32-head` directory into a new one whose input embedding "
        "and lm_head are per-row int8 (4x smaller than fp32) or grouped int4 (7x smaller); the head dominates "
        "decoding time on models with a large vocabulary. The decoder blocks are copied unchanged, one module in "
        "memory at a time. A tied model's head is stored once; `--head int8-tied` / `int4-tied` make the lm_head's "
        "table the embedding's too (one table instead of two, also from a result already in int8 / int4).",
    )
    p.add_argument("dir", help="a packed output directory of `ptq161 quantize` (fp32 head, or int8 / int4 for -tied)")
    p.add_argument("--output", "-o", required=True, help="the new directory (must not exist or be empty)")
    head = p.add_mutually_exclusive_group(required=True)
    head.add_argument(
        "--head",
        choices=("int8", "int4", "int8-tied", "int4-tied"),
        help="the format of the embedding and lm_head (-tied: one table, the lm_head's, for both; a result already "
        "in int8 / int4 converts to its -tied format, or stores once a tied head it stored twice)",
    )
    head.add_argument("--int8-head", dest="head", action="store_const", const="int8", help="same as --head int8")
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert and print where the result went."""
    meta = convert(args.dir, args.output, head=args.head, **load_options(args))
    size = sum(f["bytes"] for f in meta["files"].values())
    print(f"{args.output}: {meta['method']} packed, embedding and lm_head {args.head}, {size / 2**20:.1f} MiB")
    return 0
