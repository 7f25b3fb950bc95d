"""Usable 1.6-bit models (issue 15): what each change to the block stage and the end-to-end stage buys.

One change at a time from the old default (the paper's loss, absolute learning rates, constant
schedule, mean |x| statistic), on the ablation budget (16 x 512 tokens of WikiText-2
validation, 4 epochs, seed 2), then combinations and the end-to-end stage. Each row is a
fresh child process: quantize smollm2-135m, evaluate WikiText-2 test and C4 (GPTQ style) on the
first 8 windows of 2048 tokens. "late blocks train" is the mean relative drop of the T1 term
(FP-input target) from the first to the last epoch over blocks 12-27, where the old loss
barely moves.
"""

from __future__ import annotations

import argparse

from benchmarks.common import (
    bench_parser,
    fp_perplexities,
    note,
    quantize_and_evaluate,
    run_pending,
    serve_child,
    stored,
    write_results,
)
from ptq161.eval.report import markdown_table

ABL = {"nsamples": 16, "seqlen": 512, "epochs": 4}
E2E = {"steps": 150, "lr": 1e-3, "topk": 64, "heldout": 2}
# name -> (label, calibration and config overrides, end-to-end settings or None)
ROWS: dict[str, tuple[str, dict, dict | None]] = {
    "old_default": ("old default (paper loss, lr 5e-4 / 1e-3, constant)", {}, None),
    "loss_delta": ("+ loss on the block's own change (delta)", {"loss": "delta"}, None),
    "loss_normalized": ("+ per-channel normalized loss", {"loss": "normalized"}, None),
    "s_log": ("+ log-parameterised s (lr 1e-2, relative)", {"s_param": "log", "lr_s": 1e-2}, None),
    "cosine": ("+ cosine schedule with warm-up", {"schedule": "cosine"}, None),
    "bound": ("+ salient channels by the paper's bound", {"statistic": "bound"}, None),
    "range_row": ("+ 4-bit range over the whole row", {"salient_range": "row"}, None),
    "e2e_only": ("old default + end-to-end stage (150 steps)", {}, E2E),
}


def run_row(name: str, windows: int) -> dict:
    """Quantize + evaluate one row in this process."""
    from ptq161 import CalibConfig
    from ptq161.methods.ptq161 import PTQ161Config
    from ptq161.pipeline.e2e import E2EConfig

    _label, over, e2e = ROWS[name]
    over = {**ABL, **over}
    calib = CalibConfig(dataset=over.pop("calib", None), nsamples=over.pop("nsamples"), seqlen=over.pop("seqlen"))
    row = quantize_and_evaluate("ptq161", PTQ161Config(**over), calib, windows, e2e=E2EConfig(**e2e) if e2e else None)
    return {**row, "name": name}


def late_block_drop(row: dict) -> str:
    """Mean relative drop of the T1 term over blocks 12-27 (first -> last epoch), or of the loss for old rows."""
    logs = [b for b in row["block_logs"] if 12 <= b["block"] <= 27]
    key = "t1" if "t1_first_epoch" in logs[0] else "loss"
    drops = [1 - b[f"{key}_last_epoch"] / b[f"{key}_first_epoch"] for b in logs]
    return f"{100 * sum(drops) / len(drops):.1f} %"


def render(store: dict, args: argparse.Namespace) -> None:
    fp = store["fp"]
    head = ["row", "WikiText-2 ppl", "C4 ppl", "x FP (WikiText-2)", "bits/w stored", "late blocks train", "minutes"]
    rows = [("FP (dequantized Q4_1)", round(fp["wikitext2"], 2), round(fp["c4"], 2), 1.0, 32, "-", "-")]
    for name, (label, _over, _e2e) in ROWS.items():
        if name in store["rows"]:
            r = store["rows"][name]
            rows.append(
                (
                    label,
                    round(r["wikitext2_ppl"], 2),
                    round(r["c4_ppl"], 2),
                    round(r["wikitext2_ppl"] / fp["wikitext2"], 1),
                    round(r["stored_bits_per_weight"], 4),
                    late_block_drop(r),
                    round(r["quantize_seconds"] / 60, 1),
                )
            )
    write_results(
        "quality",
        "Usable 1.6-bit models: block-stage changes and the end-to-end stage (smollm2-135m)",
        "## One change at a time (ablation budget 16 x 512 tokens, 4 epochs)\n\n" + markdown_table(head, rows),
        {"fp": fp, "rows": store["rows"]},
        note("quality", windows=args.windows),
        keep_meta=store if args.render_only else None,
        model="smollm2-135m",
        eval_windows=args.windows,
    )


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--windows", type=int, default=8)
    args = ap.parse_args()
    if serve_child(args, lambda name: run_row(name, args.windows)):
        return
    store = stored("quality")
    store.setdefault("rows", {})
    if "fp" not in store:
        store["fp"] = stored("compare").get("fp") or fp_perplexities(args.windows)

    def after(name: str) -> None:
        r = store["rows"][name]
        print(f"  {name}: wikitext2 {r['wikitext2_ppl']:.2f} c4 {r['c4_ppl']:.2f} in {r['quantize_seconds']:.0f} s")
        render(store, args)

    run_pending(
        "benchmarks.quality", store["rows"], args.rows.split(","), args, ["--windows", str(args.windows)], after
    )
    render(store, args)


if __name__ == "__main__":
    main()
