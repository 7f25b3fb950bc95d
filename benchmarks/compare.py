"""Paper Table 1 analogue on smollm2-135m: FP and every method on one calibration set.

Each method runs in a fresh child process (its own wall time and peak RSS) and its row
is stored in results/compare.json as soon as it finishes; re-running resumes the table.
The PTQ1.61 row can be taken from results/ptq161_runs.json (``--reuse-ptq161``) when that
run used exactly the same calibration set and settings (the method is deterministic).
"""

from __future__ import annotations

import argparse
import json

from benchmarks.common import OUTPUTS, RESULTS, fp_perplexities, quantize_and_evaluate, run_child, write_results
from ptq161.eval.report import markdown_table

ROWS: dict[str, tuple[str, dict]] = {
    "rtn_w4": ("rtn", dict(bits=4)),
    "rtn_w3": ("rtn", dict(bits=3)),
    "rtn_w2": ("rtn", dict(bits=2)),
    "rtn_w1_xnor": ("rtn", dict(bits=1)),
    "gptq_w4": ("gptq", dict(bits=4)),
    "gptq_w3": ("gptq", dict(bits=3)),
    "gptq_w3_g128": ("gptq", dict(bits=3, group_size=128)),
    "gptq_w2": ("gptq", dict(bits=2)),
    "gptq_w2_g128": ("gptq", dict(bits=2, group_size=128)),
    "pbllm": ("pbllm", dict()),
    "billm": ("billm", dict()),
    "billm_weight_search": ("billm", dict(search="weight")),  # the literal reading of the paper (see billm.py)
    "ptq161": ("ptq161", dict(preset="cpu")),
}
PAPER_LABEL = {"rtn": "{bits}", "gptq": "{bits}", "pbllm": "1.7 (+1)", "billm": "1 (+1.1)", "ptq161": "1.6 (+0.0002)"}


def run_row(name: str, nsamples: int, seqlen: int, windows: int) -> dict:
    """Quantize + evaluate one row in this process."""
    from ptq161 import CalibConfig
    from ptq161.config import PRESETS
    from ptq161.methods.base import get_method

    method, opts = ROWS[name]
    opts = dict(opts)
    if "preset" in opts:
        opts = {"epochs": PRESETS[opts.pop("preset")].epochs}
    cfg = get_method(method).config_class(**opts)
    calib = CalibConfig(nsamples=nsamples, seqlen=seqlen)
    row = quantize_and_evaluate(method, cfg, calib, windows, save=OUTPUTS / "compare" / name)
    row.pop("block_logs")
    return {"name": name, "method": method, **row}


def reuse_ptq161(nsamples: int, seqlen: int, windows: int) -> dict | None:
    """A ptq161_runs.json row with the default PTQ1.61 config at the cpu preset's epochs and this calibration."""
    from ptq161.config import PRESETS
    from ptq161.methods.ptq161 import PTQ161Config

    store = RESULTS / "ptq161_runs.json"
    if not store.exists():
        return None
    want_cfg = PTQ161Config(epochs=PRESETS["cpu"].epochs).to_dict()
    want_calib = {"dataset": None, "nsamples": nsamples, "seqlen": seqlen, "seed": 2}
    for run, row in json.loads(store.read_text())["runs"].items():
        if row["config"] == want_cfg and row["calibration"] == want_calib and row["eval_windows"] == windows:
            kept = {k: v for k, v in row.items() if k != "block_logs"}
            return {**kept, "name": "ptq161", "method": "ptq161", "reused_from": f"ptq161_runs.json:{run}"}
    return None


def render(rows: dict, fp: dict, args: argparse.Namespace) -> None:
    table_rows = [("FP (dequantized Q4_1)", "16", 16.0, round(fp["wikitext2"], 2), round(fp["c4"], 2), "-", "-")]
    for name in ROWS:
        if name not in rows:
            continue
        r = rows[name]
        label = (
            PAPER_LABEL[r["method"]].format(**r["config"])
            if r["method"] in ("rtn", "gptq")
            else PAPER_LABEL[r["method"]]
        )
        g = r["config"].get("group_size")
        table_rows.append(
            (
                name + (f" (g{g})" if g else ""),
                label,
                round(r["stored_bits_per_weight"], 3),
                round(r["wikitext2_ppl"], 2),
                round(r["c4_ppl"], 2),
                f"{round(r['quantize_seconds'])}*" if r.get("timing_contended") else round(r["quantize_seconds"]),
                round(r["peak_rss_mb"]),
            )
        )
    head = [
        "method",
        "weight bits (+extra), papers' count",
        "true bits/weight (stored)",
        "WikiText-2 ppl",
        "C4 ppl",
        "quantize s",
        "peak RSS MiB",
    ]
    notes = (
        f"smollm2-135m; calibration {args.nsamples} x {args.seqlen} tokens of WikiText-2 validation (no train "
        f"split here), seed 2, the same windows for every method. Perplexity: first {args.windows} windows of "
        "2048 tokens of WikiText-2 test and of C4 GPTQ-style (c4_validation_2k.parquet, seed 0). True bits count "
        "every stored part of the decoder linears (weights, masks/bitmaps, scales, zero-points); FP is stored "
        "here as fp16 for the bits column. Times on 2 CPU cores, one fresh process per method."
    )
    contended = [f"{n}: {r['timing_contended']}" for n, r in rows.items() if r.get("timing_contended")]
    if contended:
        notes += " * time measured under contention, not comparable: " + "; ".join(contended) + "."
    write_results(
        "compare",
        "Methods side by side on smollm2-135m (paper Table 1 analogue)",
        markdown_table(head, table_rows),
        {"fp": fp, "rows": rows},
        notes,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        windows=args.windows,
        seed=2,
    )


def main() -> None:
    from ptq161.config import PRESETS

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--nsamples", type=int, default=PRESETS["cpu"].nsamples)
    ap.add_argument("--seqlen", type=int, default=PRESETS["cpu"].seqlen)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--reuse-ptq161", action="store_true")
    ap.add_argument("--redo", default="", help="comma-separated rows to recompute even if stored")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_row(args.child, args.nsamples, args.seqlen, args.windows)))
        return
    store = RESULTS / "compare.json"
    saved = json.loads(store.read_text()) if store.exists() else {}
    rows, fp = saved.get("rows", {}), saved.get("fp")
    if fp is None:
        fp = fp_perplexities(args.windows)
    redo = set(filter(None, args.redo.split(",")))
    for name in args.rows.split(","):
        if name in rows and name not in redo:
            continue
        if name == "ptq161" and args.reuse_ptq161 and (row := reuse_ptq161(args.nsamples, args.seqlen, args.windows)):
            rows[name] = row
        else:
            print(f"running {name} ...", flush=True)
            rows[name] = run_child(
                "benchmarks.compare",
                "--child",
                name,
                "--nsamples",
                str(args.nsamples),
                "--seqlen",
                str(args.seqlen),
                "--windows",
                str(args.windows),
            )
        r = rows[name]
        bits = r["stored_bits_per_weight"]
        print(f"  {name}: wikitext2 {r['wikitext2_ppl']:.2f} c4 {r['c4_ppl']:.2f} bits {bits:.3f}", flush=True)
        render(rows, fp, args)


if __name__ == "__main__":
    main()
