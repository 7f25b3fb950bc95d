"""``ptq161 eval``: zero-shot accuracy through lm-evaluation-harness on the local task files."""

from __future__ import annotations

import argparse
import sys

from ..api import load_model
from ..eval.report import markdown_table, run_metadata
from ..eval.zeroshot import PAPER_TASKS, TASKS, evaluate_zeroshot, parse_tasks, require_lm_eval
from ..parallel import World, joined
from ..pipeline.convert import dequantize_model_in_place
from ..utils import atomic_write_json
from .common import add_data_dir, add_device, add_dtype, add_load_options, load_options, positive_int, torch_dtype


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser(
        "eval",
        help="zero-shot tasks (PIQA, ARC, HellaSwag, WinoGrande, LAMBADA) through lm-evaluation-harness, offline",
        description="0-shot accuracy with lm-eval's own task definitions and metrics, on the local copies of the "
        "datasets in the data directory (needs the optional extra: pip install 'ptq161[eval]'). RACE has no "
        "offline copy here and is reported as unavailable.",
    )
    p.add_argument("model", help="a ptq161 output directory (packed or dense), smollm2-135m, a model dir or hub id")
    p.add_argument(
        "--tasks",
        default=",".join(t for t in PAPER_TASKS if t != "race"),
        help=f"comma-separated, from: {', '.join(PAPER_TASKS)} (default: all available)",
    )
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N documents of each task")
    p.add_argument("--batch-size", type=positive_int, default=8, help="lm-eval batch size (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="lm-eval seeds (default: 0; 0-shot needs none)")
    p.add_argument(
        "--keep-packed",
        action="store_true",
        help="score with the packed modules (same numbers, slower) instead of their dequantized dense weights",
    )
    p.add_argument("--json", help="write metrics, task versions, sample counts and settings to this JSON file")
    add_data_dir(p)
    add_device(p)
    add_dtype(p)
    add_load_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the tasks and print a table (JSON with ``--json``)."""
    tasks = parse_tasks(args.tasks)
    require_lm_eval()
    with joined(args.device) as world:  # under torchrun: lm-eval's data-parallel mode, documents split by rank
        return _evaluate(args, tasks, world)


def _evaluate(args: argparse.Namespace, tasks: list[str], world: World) -> int:
    model, tok = load_model(args.model, device=args.device, dtype=torch_dtype(args.dtype), **load_options(args))
    if not args.keep_packed:
        dequantize_model_in_place(model)
    res = evaluate_zeroshot(
        model, tok, tasks, limit=args.limit, batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed
    )
    if not world.main:
        return 0  # rank 0 prints and writes
    rows = []
    for name in tasks:
        if name in res.unavailable:
            rows.append((name, "not available", "-", "-", "-", res.unavailable[name]))
            continue
        m = res.tasks[name]
        for metric in TASKS[name].metrics:
            rows.append(
                (
                    name,
                    metric,
                    f"{m[metric]:.4f}",
                    f"{m.get(metric + '_stderr', float('nan')):.4f}",
                    res.n_samples[name],
                    f"lm-eval task version {res.versions[name]}",
                )
            )
    print(f"model: {args.model}; 0-shot, {'all documents' if args.limit is None else f'first {args.limit} documents'}")
    print(markdown_table(["task", "metric", "value", "stderr", "documents", "note"], rows))
    print(f"[{res.seconds:.0f} s]", file=sys.stderr)
    if args.json:
        meta = run_metadata(model=args.model, tasks=tasks, limit=args.limit, batch_size=args.batch_size, seed=args.seed,
                            ranks=world.size)  # fmt: skip
        atomic_write_json(args.json, {**meta, **res.to_dict()})
    return 0
