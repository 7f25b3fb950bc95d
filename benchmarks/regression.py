"""Regression check on smollm2-135m: today's code against the numbers committed in results/compare.json.

Reruns a few rows of the comparison table exactly as ``benchmarks/compare.py`` runs them (fresh
child processes, the same calibration windows and settings) and the FP perplexity, and reports
today's numbers beside the stored ones with their relative difference. Deterministic methods must
give the same numbers; the table names the commits compared.
"""

from __future__ import annotations

import argparse

from benchmarks.common import fp_perplexities, note, rows_parser, run_pending, serve_child, stored, write_results
from ptq161.eval.report import markdown_table

ROWS = ("rtn_w4", "gptq_w3_g128", "pbllm")


def run_row(name: str, args: argparse.Namespace) -> dict:
    """One row, as compare.py runs it (its artifact is not kept)."""
    from benchmarks.compare import run_row as compare_row

    if name == "fp":
        return {"name": "fp", **{f"{k}_ppl": v for k, v in fp_perplexities(args.windows).items()}}
    return compare_row(name, args.nsamples, args.seqlen, args.windows)


def render(store: dict, args: argparse.Namespace) -> None:
    ref = stored("compare")
    table, worst = [], 0.0
    for name in ("fp", *ROWS):
        if name not in store["rows"]:
            continue
        new = store["rows"][name]
        old = (
            {
                "wikitext2_ppl": ref["fp"]["wikitext2"],
                "c4_ppl": ref["fp"]["c4"],
                "git_commit": ref["machine"]["git_commit"],
            }
            if name == "fp"
            else ref["rows"][name]
        )
        for ds in ("wikitext2", "c4"):
            rel = abs(new[f"{ds}_ppl"] / old[f"{ds}_ppl"] - 1)
            worst = max(worst, rel)
            table.append(
                (name, ds, round(old[f"{ds}_ppl"], 4), round(new[f"{ds}_ppl"], 4), f"{rel:.1e}", old["git_commit"][:7])
            )
    head = ["row", "dataset", "committed ppl", "today's ppl", "relative difference", "committed at"]
    write_results(
        "regression",
        "smollm2-135m: today's code against the committed comparison table",
        markdown_table(head, table),
        {"rows": store["rows"], "worst_relative_difference": worst},
        note("regression", worst=f"{worst:.1e}"),
        keep_meta=store if args.render_only else None,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        windows=args.windows,
    )


def main() -> None:
    ap = rows_parser(__doc__, ("fp", *ROWS))
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=256)
    args = ap.parse_args()
    if serve_child(args, lambda name: run_row(name, args)):
        return
    store = stored("regression")
    store.setdefault("rows", {})
    child_args = ["--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--windows", str(args.windows)]
    run_pending("benchmarks.regression", store["rows"], args.rows.split(","), args, child_args)
    render(store, args)


if __name__ == "__main__":
    main()
