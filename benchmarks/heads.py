"""Compact heads (issue 18): the embedding and lm_head in fp32 against per-row int8, on one packed model.

``ptq161 quantize smollm2-135m --fp32-head`` (the cpu preset, written to ``outputs/heads/fp32`` unless
``--packed`` names another fp32-head packed output) and ``ptq161 convert --int8-head`` of it (byte-identical
to what the default ``ptq161 quantize smollm2-135m`` writes, tests/pipeline/test_convert.py); both are evaluated
on the first 8 x 2048 windows of WikiText-2 and C4, and ``ptq161 bench INT8 --against FP32`` times
prefill and decode of both in one process (ratios count; a busy machine is recorded).
"""

from __future__ import annotations

import argparse
import json
import shutil

from benchmarks.common import (
    OUTPUTS,
    bench_parser,
    note,
    run_pending,
    serve_child,
    stored,
    timing_note,
    write_results,
)
from ptq161.eval.report import markdown_table

ROWS = ("fp32", "int8", "speed")


def run_row(name: str, args: argparse.Namespace) -> dict:
    """One row in this (fresh) process."""
    from ptq161.api import convert, evaluate_perplexity, load_model
    from ptq161.pipeline.output_dir import read_meta

    src = args.packed
    int8 = str(OUTPUTS / "heads" / "int8")
    if name == "fp32" and read_meta(src) is None:
        quantize_fp32_head(src)
    if name == "int8":
        shutil.rmtree(int8, ignore_errors=True)
        convert(src, int8)
    target = {"fp32": src, "int8": int8}.get(name)
    if target is not None:
        model, tok = load_model(target)
        res = evaluate_perplexity(model, tok, ["wikitext2", "c4"], max_windows=args.windows, progress=False)
        size = sum(f["bytes"] for f in read_meta(target)["files"].values())
        return {"dir": target, "bytes": size, **{f"{r.dataset}_ppl": r.ppl for r in res}}
    from ptq161.cli import main as cli

    contended = timing_note()
    report = OUTPUTS / "heads" / "bench.json"
    if cli(["bench", int8, "--against", src, "--json", str(report)]) != 0:
        raise SystemExit("ptq161 bench failed")
    res = json.loads(report.read_text())
    row = {"int8": res[int8], "fp32": res[src]}
    return row | ({"timing_contended": contended} if contended else {})


def quantize_fp32_head(out: str) -> None:
    """``ptq161 quantize smollm2-135m --fp32-head --output OUT`` (cpu preset) in a subprocess; resumes."""
    import subprocess
    import sys
    from pathlib import Path

    from ptq161.pipeline.state import STATE_DIR

    argv = [sys.executable, "-m", "ptq161", "quantize", "smollm2-135m", "--fp32-head", "--output", out]
    if (Path(out) / STATE_DIR).exists():
        argv.append("--resume")
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def shown(path: str) -> str:
    """``path`` relative to the repository when it lies inside it."""
    from pathlib import Path

    root = OUTPUTS.parent
    p = Path(path).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else path


def render(store: dict, args: argparse.Namespace) -> None:
    rows = store["rows"]
    table = []
    for name in ("fp32", "int8"):
        if name not in rows:
            continue
        r = rows[name]
        speed = rows.get("speed", {}).get(name, {})
        table.append(
            (
                f"{name} embedding + lm_head",
                f"{r['wikitext2_ppl']:.2f}",
                f"{r['c4_ppl']:.2f}",
                f"{r['bytes'] / 2**20:.1f}",
                f"{speed['prefill_tokens_per_s']:.0f}" if speed else "-",
                f"{speed['decode_tokens_per_s']:.1f}" if speed else "-",
            )
        )
    if "fp32" in rows and "int8" in rows:
        loss = rows["int8"]["wikitext2_ppl"] / rows["fp32"]["wikitext2_ppl"] - 1
        store["wikitext2_change"] = loss
    head = ["head", "WikiText-2", "C4", "files MiB", "prefill tok/s", "decode tok/s"]
    extra = ""
    if "wikitext2_change" in store:
        extra += f"\n\nWikiText-2 change with the int8 head: {100 * store['wikitext2_change']:+.2f} % (limit: +1 %)."
    if rows.get("speed", {}).get("timing_contended"):
        extra += f"\n\n* timings contended: {rows['speed']['timing_contended']}"
    write_results(
        "heads",
        "Embedding and lm_head: fp32 against per-row int8 (packed cpu-preset smollm2-135m)",
        markdown_table(head, table),
        {"rows": rows, **({"wikitext2_change": store["wikitext2_change"]} if "wikitext2_change" in store else {})},
        note("heads", windows=args.windows, packed=shown(args.packed)) + extra,
        keep_meta=store if args.render_only else None,
        packed=shown(args.packed),
        windows=args.windows,
    )


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--packed", default=str(OUTPUTS / "heads" / "fp32"), help="a packed fp32-head output")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--rows", default=",".join(ROWS))
    args = ap.parse_args()
    if serve_child(args, lambda name: run_row(name, args)):
        return
    store = stored("heads")
    store.setdefault("rows", {})
    child = ["--packed", args.packed, "--windows", str(args.windows)]
    run_pending("benchmarks.heads", store["rows"], args.rows.split(","), args, child, lambda _: render(store, args))
    render(store, args)


if __name__ == "__main__":
    main()
