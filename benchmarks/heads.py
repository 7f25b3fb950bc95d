"""Compact heads (issue 18): the embedding and lm_head in fp32, per-row int8 and grouped int4, on one packed model.

``ptq161 quantize smollm2-135m --fp32-head`` (the cpu preset, written to ``outputs/heads/fp32`` unless
``--packed`` names another fp32-head packed output) and ``ptq161 convert --head int8`` / ``--head int4`` of it
(byte-identical to what ``ptq161 quantize smollm2-135m --head ...`` writes, tests/pipeline/test_convert.py);
each is evaluated on the first 8 x 2048 windows of WikiText-2 and C4. ``ptq161 bench INT8 --against FP32``
(row ``speed``) and ``ptq161 bench INT4 --against INT8`` (row ``speed4``) time prefill and decode of two
models in one process each (ratios count; a busy machine is recorded).
"""

from __future__ import annotations

import argparse
import json
import shutil

from benchmarks.common import (
    OUTPUTS,
    PAPERS_CALIB,
    bench_parser,
    note,
    run_pending,
    serve_child,
    stored,
    timing_note,
    write_results,
)
from ptq161.eval.report import markdown_table

ROWS = ("fp32", "int8", "speed", "int4", "speed4")
HEADS = ("fp32", "int8", "int4")


def run_row(name: str, args: argparse.Namespace) -> dict:
    """One row in this (fresh) process."""
    from ptq161.api import convert, evaluate_perplexity, load_model
    from ptq161.pipeline.output_dir import read_meta

    src = args.packed
    dirs = {"fp32": src, "int8": str(OUTPUTS / "heads" / "int8"), "int4": str(OUTPUTS / "heads" / "int4")}
    if name == "fp32" and read_meta(src) is None:
        quantize_fp32_head(src)
    if name in ("int8", "int4"):
        shutil.rmtree(dirs[name], ignore_errors=True)
        convert(src, dirs[name], head=name)
    target = dirs.get(name) if name in HEADS else None
    if target is not None:
        model, tok = load_model(target)
        res = evaluate_perplexity(model, tok, ["wikitext2", "c4"], max_windows=args.windows, progress=False)
        size = sum(f["bytes"] for f in read_meta(target)["files"].values())
        return {"dir": target, "bytes": size, **{f"{r.dataset}_ppl": r.ppl for r in res}}
    from ptq161.cli import main as cli

    first, against = ("int8", "fp32") if name == "speed" else ("int4", "int8")
    contended = timing_note()
    report = OUTPUTS / "heads" / f"{name}.json"
    if cli(["bench", dirs[first], "--against", dirs[against], "--json", str(report)]) != 0:
        raise SystemExit("ptq161 bench failed")
    res = json.loads(report.read_text())
    row = {first: res[dirs[first]], against: res[dirs[against]]}
    return row | ({"timing_contended": contended} if contended else {})


def quantize_fp32_head(out: str) -> None:
    """``ptq161 quantize smollm2-135m --fp32-head --output OUT`` (cpu preset) in a subprocess; resumes."""
    import subprocess
    import sys
    from pathlib import Path

    from ptq161.pipeline.state import STATE_DIR

    argv = [
        sys.executable,
        "-m",
        "ptq161",
        "quantize",
        "smollm2-135m",
        "--fp32-head",
        "--calib",
        PAPERS_CALIB,
        "--output",
        out,
    ]
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
    for name in HEADS:
        if name not in rows:
            continue
        r = rows[name]
        for sitting in ("speed", "speed4"):  # one bench process each: fp32 / int8, then int8 / int4
            speed = rows.get(sitting, {}).get(name, {})
            if speed or (sitting == "speed" and name != "int4") or (sitting == "speed4" and name == "int4"):
                table.append(
                    (
                        f"{name} embedding + lm_head",
                        f"{r['wikitext2_ppl']:.2f}",
                        f"{r['c4_ppl']:.2f}",
                        f"{r['bytes'] / 2**20:.1f}",
                        sitting,
                        f"{speed['prefill_tokens_per_s']:.0f}" if speed else "-",
                        f"{speed['decode_tokens_per_s']:.1f}" if speed else "-",
                    )
                )
    changes = {h: rows[h]["wikitext2_ppl"] / rows["fp32"]["wikitext2_ppl"] - 1 for h in ("int8", "int4")
               if "fp32" in rows and h in rows}  # fmt: skip
    store["wikitext2_change"] = changes.get("int8")
    store["wikitext2_change_int4"] = changes.get("int4")
    head = ["head", "WikiText-2", "C4", "files MiB", "timed in", "prefill tok/s", "decode tok/s"]
    extra = ""
    for h, change in changes.items():
        extra += f"\n\nWikiText-2 change with the {h} head: {100 * change:+.2f} % (limit for the default: +1 %)."
    for sitting in ("speed", "speed4"):
        if rows.get(sitting, {}).get("timing_contended"):
            extra += f"\n\n* {sitting} timings contended: {rows[sitting]['timing_contended']}"
    write_results(
        "heads",
        "Embedding and lm_head: fp32, per-row int8 and grouped int4 (packed cpu-preset smollm2-135m)",
        markdown_table(head, table),
        {"rows": rows, **{k: store[k] for k in ("wikitext2_change", "wikitext2_change_int4")}},
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
