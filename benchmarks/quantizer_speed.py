"""Quantizer speed (issue 18): the cpu-preset quantization of smollm2-135m, before and after, in one sitting.

Every row runs ``ptq161 quantize smollm2-135m --output DIR`` (all defaults: the cpu preset, block
stage then the end-to-end stage) in a fresh process, then evaluates DIR as saved (WikiText-2 and
C4, the first 8 windows of 2048 tokens, with this checkout's evaluation code):

- ``baseline``: the code of ``--baseline`` (a commit; default b4bee9b, the last one before the
  factored end-to-end products and bfloat16 training products), checked out in a git worktree
  under ``outputs/quantizer_speed/`` and put first on the child's ``PYTHONPATH``;
- ``fp32``: this checkout with ``--train-matmul float32``: the factored end-to-end products
  alone (exact arithmetic, float summation order aside);
- ``head``: this checkout with its defaults (``--train-matmul auto``: bfloat16 products on CPUs
  with AVX-512 BF16 / AMX).

The table gives the command's wall time, the block stage (sum of the per-block seconds in
ptq161.json), the end-to-end stage, peak RSS, perplexities and each row's time and perplexity
against the baseline's. Only same-sitting ratios mean anything on these machines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    OUTPUTS,
    RESULTS,
    bench_parser,
    run_pending,
    serve_child,
    stored,
    table_perplexities,
    timing_note,
    write_results,
)
from ptq161.eval.report import markdown_table

ROWS = ("baseline", "fp32", "head")
EXTRA_ARGS = {"baseline": [], "fp32": ["--train-matmul", "float32"], "head": []}
WHERE = OUTPUTS / "quantizer_speed"


def baseline_source(commit: str) -> Path:
    """A git worktree of ``commit`` (created once); returns its ``src`` directory."""
    tree = WHERE / f"src_{commit}"
    if not tree.exists():
        WHERE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], check=True, capture_output=True)
    return tree / "src"


def run_row(name: str, args: argparse.Namespace) -> dict:
    """One row: the quantize command in a child process (baseline: on the baseline's source), then evaluation."""
    import shutil

    from ptq161 import load
    from ptq161.pipeline.output_dir import read_meta

    out = WHERE / name
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ)
    if name == "baseline":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(baseline_source(args.baseline)), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "ptq161", "quantize", "smollm2-135m", "--output", str(out), *EXTRA_ARGS[name]]
    contended = timing_note()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    meta = read_meta(out)
    ppl = table_perplexities(*load(str(out)), args.windows)
    logs = meta["block_logs"]
    e2e = meta.get("e2e_log") or {}
    return {
        "name": name,
        "command": " ".join(["ptq161", *cmd[3:]]).replace(str(RESULTS.parents[1]) + "/", ""),
        "source": f"git worktree of {args.baseline}" if name == "baseline" else "this checkout",
        "command_wall_seconds": wall,
        "quantize_seconds": meta["seconds"],
        "block_stage_seconds": sum(log["seconds"] for log in logs),
        "e2e_seconds": e2e.get("seconds"),
        "matmul_dtype": {log.get("matmul_dtype", "float32") for log in logs}.pop(),
        "e2e_matmul_dtype": e2e.get("matmul_dtype", "float32"),
        "peak_rss_mb": meta["peak_rss_mb"],
        "stored_bits_per_weight": meta["bits"]["stored_bits_per_weight"],
        "wikitext2_ppl": ppl["wikitext2"],
        "c4_ppl": ppl["c4"],
        "e2e_heldout_kl_after": e2e.get("heldout_kl_after"),
        **({"timing_contended": contended} if contended else {}),
    }


def ppl_vs(r: dict, base: dict | None, key: str) -> str:
    """A row's perplexity and its change against the baseline's."""
    return f"{r[key]:.2f}" + (f" ({100 * (r[key] / base[key] - 1):+.2f} %)" if base else "")


def render(store: dict, args: argparse.Namespace) -> None:
    rows = store["rows"]
    base = rows.get("baseline")
    table = []
    for name in ROWS:
        if name not in rows:
            continue
        r = rows[name]

        def vs(key: str, r: dict = r) -> str:
            return f"{base[key] / r[key]:.2f}x" if base and r.get(key) else "-"

        table.append(
            [
                name + (" (contended)" if r.get("timing_contended") else ""),
                f"{r['matmul_dtype']} / {r['e2e_matmul_dtype']}",
                f"{r['command_wall_seconds']:.0f} s ({vs('command_wall_seconds')})",
                f"{r['block_stage_seconds']:.0f} s ({vs('block_stage_seconds')})",
                f"{r['e2e_seconds']:.0f} s ({vs('e2e_seconds')})" if r.get("e2e_seconds") else "-",
                f"{r['peak_rss_mb']:.0f}",
                ppl_vs(r, base, "wikitext2_ppl"),
                ppl_vs(r, base, "c4_ppl"),
                f"{r['stored_bits_per_weight']:.4f}",
            ]
        )
    md = markdown_table(
        [
            "row",
            "products (block / e2e)",
            "whole command (speed-up)",
            "block stage",
            "end-to-end stage",
            "peak RSS MiB",
            "WikiText-2 (vs baseline)",
            "C4",
            "stored bits",
        ],
        table,
    )
    f = RESULTS.parent / "notes" / "quantizer_speed.md"
    notes = f.read_text() if f.exists() else ""
    write_results(
        "quantizer_speed",
        "Quantizer speed: cpu-preset quantization of smollm2-135m, before and after (issue 18)",
        md,
        store,
        notes=notes,
        keep_meta=store if args.render_only else None,
        baseline=args.baseline,
        windows=args.windows,
    )
    print(md)


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--baseline", default="b4bee9b", help="commit of the baseline row (default b4bee9b)")
    ap.add_argument("--rows", default=",".join(ROWS), help="rows to run, in this order (default: all)")
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows of 2048 tokens (default 8)")
    args = ap.parse_args()
    if serve_child(args, lambda name: run_row(name, args)):
        return
    store = stored("quantizer_speed")
    store.setdefault("rows", {})
    names = [n for n in args.rows.split(",") if n]
    child_args = ["--baseline", args.baseline, "--windows", str(args.windows)]
    run_pending("benchmarks.quantizer_speed", store["rows"], names, args, child_args, lambda _n: render(store, args))
    render(store, args)


if __name__ == "__main__":
    main()
