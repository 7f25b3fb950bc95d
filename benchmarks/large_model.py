"""A model larger than the memory budget, end to end through the commands a user runs (issue 16).

Default: qwen2.5-coder-1.5b (7.1 GB in fp32) with ``--max-memory 3GB``. Each step runs in a
fresh child process whose whole peak RSS is recorded:

- ``fp``: ``ptq161 ppl MODEL --max-memory 3GB`` on the first 8 x 2048 windows of WikiText-2 and C4
  (block onloading: the GPTQ papers' block-wise loop);
- ``ptq161``: ``ptq161 quantize MODEL --preset large --max-memory 3GB`` (block onloading);
- ``ptq161_ppl``: ``ptq161 ppl OUT --max-memory 3GB`` of the packed result (onloaded when its fp32 embedding
  and head exceed half the budget, as for the 1.5B model);
- ``decode``: ``ptq161 bench OUT --against MODEL``: packed decode through the fused engine against the
  dense fp32 model in the same process (the dense model needs 7.1 GB: this step is not under the budget);
- ``int8_convert``: ``ptq161 convert OUT --int8-head -o OUT-int8head`` (the embedding and lm_head in
  per-row int8, what ``quantize --int8-head`` writes), then ``int8_ppl`` and ``int8_decode`` as above on it.
- ``mem_quantize_int8`` / ``mem_ppl_int8``: memory checks only. ``ptq161 quantize MODEL --preset smoke
  --epochs 0 --e2e-steps 0 --int8-head --max-memory 3GB`` (the same packed format, tensor shapes and
  int8 head as a trained result, in minutes), then ``ptq161 ppl`` of it on one 2048-token WikiText-2
  window (windows are evaluated one after another: one shows the peak). Their perplexity says nothing
  of the method and is not reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time

from benchmarks.common import (
    OUTPUTS,
    bench_parser,
    note,
    results_name,
    run_pending,
    serve_child,
    stored,
    write_results,
)
from ptq161.eval.report import markdown_table

DEFAULT_MODEL = "qwen2.5-coder-1.5b"
STEPS = (
    "fp",
    "ptq161",
    "ptq161_ppl",
    "decode",
    "int8_convert",
    "int8_ppl",
    "int8_decode",
    "mem_quantize_int8",
    "mem_ppl_int8",
)
MEMORY_ONLY = ("mem_quantize_int8", "mem_ppl_int8")  # peak RSS of an untrained model of the same format


def _cli(argv: list[str]) -> tuple[str, float]:
    """Run ``ptq161 ARGV`` in this process: (its stdout, seconds); raises on a non-zero exit."""
    from ptq161.cli import main

    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"ptq161 {' '.join(argv)} exited {code}")
    return buf.getvalue(), time.perf_counter() - t0


def run_step(name: str, args: argparse.Namespace) -> dict:
    """One step in this (fresh) process; its peak RSS is this process's."""
    from ptq161.pipeline.output_dir import file_bits_per_weight, read_meta
    from ptq161.utils import peak_rss_mb

    out = OUTPUTS / "large_model" / f"{args.model}-{args.preset}"
    int8 = out.with_name(out.name + "-int8head")
    mem = ["--max-memory", args.max_memory]
    row: dict = {"step": name}
    smoke = OUTPUTS / "large_model" / f"{args.model}-smoke-int8head"
    if name == "mem_quantize_int8":
        if smoke.exists():
            import shutil

            shutil.rmtree(smoke)
        argv = ["quantize", args.model, "--preset", "smoke", "--epochs", "0", "--e2e-steps", "0", "--int8-head"]
        argv += ["--output", str(smoke), *mem]
        _, seconds = _cli(argv)
        row |= {"seconds": seconds, "block_onloading": read_meta(smoke)["block_onloading"]}
        row["command"] = "ptq161 " + " ".join(argv).replace(str(OUTPUTS.parent) + "/", "")
    elif name == "mem_ppl_int8":
        argv = ["ppl", str(smoke), "--datasets", "wikitext2", "--max-windows", "1", *mem]
        text, seconds = _cli(argv)
        row |= {"seconds": seconds, "block_onloading": "block by block" in text}
        row["command"] = "ptq161 " + " ".join(argv).replace(str(OUTPUTS.parent) + "/", "")
    elif name in ("fp", "ptq161_ppl", "int8_ppl"):
        target = {"fp": args.model, "ptq161_ppl": str(out), "int8_ppl": str(int8)}[name]
        report = OUTPUTS / "large_model" / f"{name}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        argv = ["ppl", target, "--datasets", "wikitext2,c4", "--max-windows", str(args.windows), *mem]
        text, seconds = _cli([*argv, "--json", str(report)])
        res = json.loads(report.read_text())
        row |= {f"{k}_ppl": v["ppl"] for k, v in res["results"].items()}
        row |= {"block_onloading": "block by block" in text, "seconds": seconds, "command": "ptq161 " + " ".join(argv)}
    elif name == "ptq161":
        if out.exists():
            import shutil

            shutil.rmtree(out)
        argv = ["quantize", args.model, "--preset", args.preset, "--output", str(out), *mem]
        _, seconds = _cli(argv)
        meta = read_meta(out)
        row |= {
            "seconds": seconds,
            "quantize_seconds": meta["seconds"],
            "block_onloading": meta["block_onloading"],
            "stored_bits_per_weight": meta["bits"]["stored_bits_per_weight"],
            "file_bits_per_weight": file_bits_per_weight(out, meta["bits"]["layers"]),
            "config": meta["config"],
            "calibration": meta["calibration"],
            "command": "ptq161 " + " ".join(argv).replace(str(OUTPUTS.parent) + "/", ""),
        }
    elif name == "int8_convert":
        if int8.exists():
            import shutil

            shutil.rmtree(int8)
        argv = ["convert", str(out), "--int8-head", "--output", str(int8)]
        _, seconds = _cli(argv)
        size = sum(f["bytes"] for f in read_meta(int8)["files"].values())
        before = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
        row |= {"seconds": seconds, "bytes": size, "bytes_before": before}
        row["command"] = "ptq161 " + " ".join(argv).replace(str(OUTPUTS.parent) + "/", "")
    elif name in ("decode", "int8_decode"):
        target = out if name == "decode" else int8
        report = OUTPUTS / "large_model" / f"{name}.json"
        argv = ["bench", str(target), "--against", args.model, "--json", str(report)]
        _, seconds = _cli(argv)
        res = json.loads(report.read_text())
        packed, dense = res[str(target)], res[args.model]
        row |= {
            "packed": packed,
            "dense": dense,
            "decode_speedup": packed["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
            "seconds": seconds,
        }
    row["peak_rss_mb"] = peak_rss_mb()
    return row


def render(store: dict, args: argparse.Namespace) -> None:
    from ptq161.models.builtin import builtin_model

    rows = store["steps"]
    table = []
    labels = {
        "fp": "FP perplexity (block onloading)",
        "ptq161": f"PTQ1.61 quantize, preset {args.preset} (block onloading)",
        "ptq161_ppl": "PTQ1.61 perplexity (packed{how})",
        "decode": "packed decode (fused engine) vs dense fp32, same process",
        "int8_convert": "`ptq161 convert --int8-head` (embedding and lm_head in int8)",
        "int8_ppl": "PTQ1.61 + int8 head perplexity (packed{how})",
        "int8_decode": "packed + int8 head decode (fused engine) vs dense fp32, same process",
        "mem_quantize_int8": "memory check: quantize --int8-head, untrained (smoke preset, epochs 0; block onloading)",
        "mem_ppl_int8": "memory check: perplexity of that int8-head model, 1 window{how}",
    }
    for name in STEPS:
        if name not in rows:
            continue
        r = rows[name]
        ppl = f"{r['wikitext2_ppl']:.2f} / {r['c4_ppl']:.2f}" if "wikitext2_ppl" in r else "-"
        bits = (
            f"{r['stored_bits_per_weight']:.3f} ({r['file_bits_per_weight']:.3f} on disk)" if name == "ptq161" else "-"
        )
        if name == "int8_convert":
            bits = f"files {r['bytes_before'] / 2**20:.0f} -> {r['bytes'] / 2**20:.0f} MiB"
        speed = "-"
        if name in ("decode", "int8_decode"):
            p, d = r["packed"], r["dense"]
            speed = (
                f"{p['decode_tokens_per_s']:.2f} vs {d['decode_tokens_per_s']:.2f} tok/s = {r['decode_speedup']:.2f}x"
            )
        minutes = f"{r['seconds'] / 60:.1f}" + ("*" if r.get("timing_contended") else "")
        label = labels[name].format(how=", block onloading" if r.get("block_onloading") else ", loaded whole")
        table.append((label, ppl, bits, minutes, round(r["peak_rss_mb"]), speed))
    head = ["step", "WikiText-2 / C4 ppl", "bits/weight", "minutes", "peak RSS MiB (whole process)", "decode"]
    spec = builtin_model(args.model)
    write_results(
        results_name("large_model", args.model, DEFAULT_MODEL),
        f"{args.model} under a {args.max_memory} memory budget",
        markdown_table(head, table),
        {"steps": rows},
        note("large_model", model=args.model, caveat=spec.caveat, budget=args.max_memory, windows=args.windows)
        + "".join(
            f"\n\n* {n}: {rows[n]['timing_contended']}" for n in STEPS if rows.get(n, {}).get("timing_contended")
        ),
        keep_meta=store if args.render_only else None,
        model=args.model,
        preset=args.preset,
        max_memory=args.max_memory,
        windows=args.windows,
    )


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--preset", default="large")
    ap.add_argument("--max-memory", default="3GB")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to run (default: all)")
    args = ap.parse_args()
    if serve_child(args, lambda name: run_step(name, args)):
        return
    name = results_name("large_model", args.model, DEFAULT_MODEL)
    store = stored(name)
    store.setdefault("steps", {})
    child_args = ["--model", args.model, "--preset", args.preset, "--max-memory", args.max_memory]
    child_args += ["--windows", str(args.windows)]
    run_pending(
        "benchmarks.large_model", store["steps"], args.steps.split(","), args, child_args, lambda _: render(store, args)
    )
    render(store, args)


if __name__ == "__main__":
    main()
