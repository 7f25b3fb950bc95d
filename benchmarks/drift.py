"""Why do the baseline rows move between runs? (issue 15: PB-LLM 559.3 in the committed table, 436.3 on today's main)

Each row quantizes smollm2-135m with PB-LLM (the fastest of the GPTQ-family baselines that
moved; GPTQ W2 and BiLLM share its Hessian / Cholesky code) through the ``ptq161 quantize``
command of one commit, under one thread / instruction-set setting, then evaluates the saved
model with today's code (2 threads, first 8 windows of WikiText-2 test and C4). Rows differ
in one thing each: the code (today's commit vs the commit that committed the table), the
torch thread count, the instruction sets oneDNN / MKL may use, and MKL's reproducibility mode.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    OUTPUTS,
    RESULTS,
    git_commit,
    note,
    rows_parser,
    run_pending,
    serve_child,
    stored,
    table_perplexities,
    write_results,
)
from ptq161.eval.report import markdown_table

TABLE_COMMIT = "f2a3828"  # the commit that committed results/compare.md with PB-LLM 559.26 (threads 1)
QUANTIZE = ["quantize", "smollm2-135m", "--method", "pbllm", "--nsamples", "64", "--calib-seqlen", "256"]
ISA_AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# name -> (label, commit or None for today's, torch threads, extra environment)
ROWS: dict[str, tuple[str, str | None, int, dict[str, str]]] = {
    "today_2t": ("today's code, 2 threads", None, 2, {}),
    "today_1t": ("today's code, 1 thread", None, 1, {}),
    "table_1t": (f"code of {TABLE_COMMIT} (the table's), 1 thread", TABLE_COMMIT, 1, {}),
    "today_2t_avx2": ("today's code, 2 threads, oneDNN / MKL limited to AVX2", None, 2, ISA_AVX2),
    "today_2t_cbwr": ("today's code, 2 threads, MKL_CBWR=COMPATIBLE", None, 2, {"MKL_CBWR": "COMPATIBLE"}),
}


def source_of(commit: str | None) -> str:
    """The src/ directory holding the code of ``commit`` (today's checkout for None)."""
    root = RESULTS.parents[1]
    if commit is None:
        return str(root / "src")
    dest = Path(tempfile.gettempdir()) / f"ptq161-src-{commit}"
    if not dest.is_dir():
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit, "src"], cwd=root, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest / "src")


def run_row(name: str, windows: int) -> dict:
    """Quantize with the row's code and environment (subprocess), evaluate here with today's code."""
    import shutil

    import torch

    from ptq161 import load

    _label, commit, threads, extra = ROWS[name]
    out = OUTPUTS / "drift" / name
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, **extra, "PYTHONPATH": source_of(commit)}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "ptq161", *QUANTIZE, "--output", str(out)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    ppl = table_perplexities(*load(str(out)), windows)
    return {
        "name": name,
        "commit": commit or git_commit(),
        "threads": threads,
        "env": extra,
        "command": "ptq161 " + " ".join(QUANTIZE),
        "quantize_wall_seconds": seconds,
        "wikitext2_ppl": ppl["wikitext2"],
        "c4_ppl": ppl["c4"],
        "eval_threads": torch.get_num_threads(),
    }


def render(store: dict, args: argparse.Namespace) -> None:
    head = ["PB-LLM quantized with", "WikiText-2 ppl", "C4 ppl", "quantize wall s"]
    rows = []
    if "committed_table" in store:
        c = store["committed_table"]
        label = f"the committed table (threads 1, {TABLE_COMMIT})"
        rows.append((label, round(c["wikitext2"], 2), round(c["c4"], 2), "-"))
    compare = stored("compare").get("rows", {}).get("pbllm", {})
    if "today_2t" not in store["rows"] and compare.get("torch_threads") == 2:  # the comparison rerun's own row
        label = f"today's code, 2 threads (results/compare.json, {compare['git_commit'][:7]})"
        rows.append((label, round(compare["wikitext2_ppl"], 2), round(compare["c4_ppl"], 2), "-"))
    for name, (label, *_rest) in ROWS.items():
        if name in store["rows"]:
            r = store["rows"][name]
            rows.append((label, round(r["wikitext2_ppl"], 2), round(r["c4_ppl"], 2), round(r["quantize_wall_seconds"])))
    write_results(
        "drift",
        "Why baseline rows move between runs (PB-LLM on smollm2-135m)",
        markdown_table(head, rows),
        {"committed_table": store.get("committed_table"), "rows": store["rows"]},
        note("drift", windows=args.windows),
        keep_meta=store if args.render_only else None,
        windows=args.windows,
    )


def main() -> None:
    ap = rows_parser(__doc__, ROWS)
    args = ap.parse_args()
    if serve_child(args, lambda name: run_row(name, args.windows)):
        return
    store = stored("drift")
    store.setdefault("rows", {})
    if "committed_table" not in store:  # as committed in f2a3828 (later runs of compare replace the row)
        import json

        root = RESULTS.parents[1]
        show = ["git", "show", f"{TABLE_COMMIT}:benchmarks/results/compare.json"]
        text = subprocess.run(show, cwd=root, check=True, capture_output=True).stdout
        row = json.loads(text)["rows"]["pbllm"]
        store["committed_table"] = {"wikitext2": row["wikitext2_ppl"], "c4": row["c4_ppl"]}
    run_pending(
        "benchmarks.drift",
        store["rows"],
        args.rows.split(","),
        args,
        ["--windows", str(args.windows)],
        lambda _name: render(store, args),
    )
    render(store, args)


if __name__ == "__main__":
    main()
