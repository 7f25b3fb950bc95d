"""``ptq161 ppl``: perplexity of a model on named datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..api import evaluate_perplexity, load_model
from ..data.corpora import EVAL_CORPORA, check_eval_name
from ..eval.report import markdown_table, run_metadata
from ..models import LazyModel, load_model_lazy, onloads
from ..parallel import World, joined
from ..pipeline.output_dir import read_meta
from ..utils import atomic_write_json
from .common import (
    add_data_dir,
    add_device,
    add_dtype,
    add_load_options,
    add_max_memory,
    csv_list,
    load_options,
    positive_int,
    torch_dtype,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "ppl",
        help="perplexity on WikiText-2 / C4 / a text file",
        description="Perplexity with the GPTQ protocol: non-overlapping seqlen windows, remainder dropped.",
    )
    p.add_argument("model", help="smollm2-135m, a local model directory (FP or ptq161 output) or a hub id")
    p.add_argument(
        "--datasets",
        type=csv_list,
        default=None,
        help=f"comma-separated: {', '.join(EVAL_CORPORA)} (default: wikitext2 if in the data dir, else wiki-sample)",
    )
    p.add_argument("--seqlen", type=positive_int, default=2048, help="window length in tokens (default: 2048)")
    p.add_argument("--max-windows", type=positive_int, default=None, help="evaluate only the first K windows")
    p.add_argument("--json", help="write results and settings to this JSON file")
    add_data_dir(p)
    add_device(p)
    add_dtype(p)
    add_load_options(p)
    add_max_memory(p)
    p.set_defaults(func=run)


def load_for_perplexity(
    spec: str, args: argparse.Namespace, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seqlen: int
) -> tuple[torch.nn.Module | LazyModel, object]:
    """(model, tokenizer) for evaluating windows of ``seqlen`` tokens: whole when it fits ``args.max_memory``
    (by ``onloads``' rule), else block-onloaded (with a message)."""
    if onloads(spec, dtype, args.max_memory, seqlen=seqlen):
        print(f"model: {spec} does not fit the memory budget whole: evaluated block by block (onloading)")
        return load_model_lazy(spec, device=device, dtype=dtype, **load_options(args))
    return load_model(spec, device=device, dtype=dtype, **load_options(args))


def run(args: argparse.Namespace) -> int:
    """Evaluate and print a table (and JSON with ``--json``)."""
    for name in args.datasets or []:
        check_eval_name(name)
    dtype = torch_dtype(args.dtype)
    with joined(args.device) as world:  # under torchrun: the windows are shared by the ranks
        return _evaluate(args, dtype, world)


def _evaluate(args: argparse.Namespace, dtype: torch.dtype, world: World) -> int:
    model, tok = load_for_perplexity(args.model, args, dtype=dtype, device=args.device, seqlen=args.seqlen)
    results = evaluate_perplexity(
        model, tok, args.datasets, seqlen=args.seqlen, max_windows=args.max_windows, data_dir=args.data_dir
    )
    if not world.main:
        return 0  # rank 0 prints and writes
    rows = [(r.dataset, r.ppl, r.windows, r.seqlen, r.tokens, round(r.tokens_per_s), r.source) for r in results]
    meta = read_meta(args.model) if Path(args.model).is_dir() else None
    quant = ""
    if meta:
        quant = f" (method {meta['method']}, {meta['bits']['stored_bits_per_weight']:.4f} bits/weight stored)"
    print(f"model: {args.model}{quant}")
    print(markdown_table(["dataset", "ppl", "windows", "seqlen", "tokens", "tok/s", "data"], rows))
    if args.json:
        meta = run_metadata(
            model=args.model,
            seqlen=args.seqlen,
            max_windows=args.max_windows,
            dtype=args.dtype,
            block_onloading=not isinstance(model, torch.nn.Module),
            ranks=world.size,
        )
        atomic_write_json(args.json, {**meta, "results": {r.dataset: r.to_dict() for r in results}})
    return 0
