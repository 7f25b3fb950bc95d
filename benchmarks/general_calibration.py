"""General-purpose calibration (issue 43): the default recipe calibrated on WikiText-2 alone against the
same recipe on a mix of WikiText-2 and the C4 train sample, both as a user runs them, on one machine.

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.general_calibration [--model smollm2-135m]

Rows are `ptq161 quantize MODEL [FLAGS]` in a fresh process, evaluated on the first 8 windows of
2048 tokens of WikiText-2 test and C4 (GPTQ style); each row records the CPU and the code paths it
took (bfloat16 or float32 training products change the numbers: compare rows of one machine only).
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.common import (
    OUTPUTS,
    fp_perplexities,
    results_name,
    rows_parser,
    run_ppl_rows,
    serve_child,
    stored,
    write_results,
)
from benchmarks.compare import cli_row
from ptq161.eval.report import markdown_table

DEFAULT_MODEL = "smollm2-135m"
ROWS: dict[str, tuple[str, ...]] = {
    "cpu_wikitext2": (),  # the cpu recipe as shipped: calibration and end-to-end windows from WikiText-2
    "cpu_mix": ("--calib-dataset", "wikitext2+c4"),  # the same windows alternating WikiText-2 and C4 train
}


def run_row(name: str, windows: int, model: str, reuse: bool = False) -> dict[str, Any]:
    if name == "fp":
        return {"fp": fp_perplexities(windows, model)}
    out = OUTPUTS / "general_calibration" / model / name
    return {"name": name, **cli_row(out, windows, model, ROWS[name], reuse=reuse)}


def render(store: dict[str, Any], args: argparse.Namespace) -> None:
    fp = store["rows"].get("fp", {}).get("fp")
    head = ["row", "command", "bits", "WikiText-2", "C4", "x FP (worse)", "s", "CPU / code paths"]
    rows = []
    for name in ROWS:
        r = store["rows"].get(name)
        if r is None:
            continue
        m = r.get("machine", {})
        paths = ", ".join(f"{k}={v}" for k, v in m.get("code_paths", {}).items())
        ratio = max(r["wikitext2_ppl"] / fp["wikitext2"], r["c4_ppl"] / fp["c4"]) if fp else float("nan")
        rows.append(
            (
                name, f"`{r['command']}`", round(r["stored_bits_per_weight"], 3), round(r["wikitext2_ppl"], 2),
                round(r["c4_ppl"], 2), f"{ratio:.2f}x", round(r["quantize_seconds"]),
                f"{m.get('cpu_model', '?')} ({m.get('cpu_id', '?')}); {paths}",
            )
        )  # fmt: skip
    if fp:
        rows.insert(
            0, ("fp", "FP (dequantized GGUF)", 16, round(fp["wikitext2"], 2), round(fp["c4"], 2), "1x", "-", "-")
        )
    name = results_name("general_calibration", args.model, DEFAULT_MODEL)
    write_results(
        name, f"General-purpose calibration: {args.model}", markdown_table(head, rows), store,
        notes=__doc__.split("\n\n")[2], model=args.model, windows=args.windows,
    )  # fmt: skip


def main() -> None:
    ap = rows_parser(__doc__, ["fp", *ROWS])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--reuse-output", action="store_true", help="evaluate a finished output instead of making it again")
    args = ap.parse_args()
    if serve_child(args, lambda name: run_row(name, args.windows, args.model, args.reuse_output)):
        return
    name = results_name("general_calibration", args.model, DEFAULT_MODEL)
    store = {"rows": stored(name).get("rows", {})}
    wanted = args.rows.split(",")
    if "fp" in wanted and ("fp" not in store["rows"] or "fp" in args.redo.split(",")):
        from benchmarks.common import run_child

        store["rows"]["fp"] = run_child("benchmarks.general_calibration", "fp", ["--model", args.model])
        render(store, args)  # stored before the long rows start
    rows = [r for r in wanted if r in ROWS]
    run_ppl_rows(
        "benchmarks.general_calibration", store, "rows", rows, args, render,
        ["--model", args.model, *(["--reuse-output"] if args.reuse_output else [])], results=name,
    )  # fmt: skip


if __name__ == "__main__":
    main()
