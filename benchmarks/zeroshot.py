"""Paper Table 2 analogue on smollm2-135m: 0-shot tasks through lm-eval, offline.

Part 1 checks the harness: FP PIQA on all 1838 validation items against an independent
lm-eval run on the same local files (acc 0.6425, acc_norm 0.6442, given in issue 7).
Part 2 evaluates FP and the quantized models of the comparison benchmark (their saved
artifacts in outputs/, written by benchmarks.compare / benchmarks.ptq161_runs) on every
available task. Each model runs in a fresh child process; rows are stored in
results/zeroshot.json as they finish and re-running resumes (``--redo NAME``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import RESULTS, bench_parser, note, reference, run_pending, serve_child, stored, write_results
from ptq161.eval.report import markdown_table

ROOT = RESULTS.parents[1]
MODELS = ("fp", "ptq161", "ptq161_paper", "billm", "pbllm", "gptq_w2")
LABELS = {
    "fp": "FP",
    "ptq161": "PTQ1.61 default (cpu preset)",
    "ptq161_paper": "PTQ1.61 paper block stage (old default)",
    "billm": "BiLLM",
    "pbllm": "PB-LLM",
    "gptq_w2": "GPTQ W2",
}
TASK_ORDER = (
    "piqa",
    "arc_easy",
    "arc_challenge",
    "hellaswag",
    "winogrande",
    "lambada_openai",
    "lambada_standard",
    "race",
)


def artifact_of(name: str) -> tuple[str, dict]:
    """Model spec and the comparison row (bits, settings) for one model of the table."""
    if name == "fp":
        return "smollm2-135m", {"stored_bits_per_weight": 16.0}
    rows = json.loads((RESULTS / "compare.json").read_text())["rows"]
    row = rows[name]
    art = row.get("artifact")
    if art is None and "reused_from" in row:
        run = row["reused_from"].split(":", 1)[1]
        art = json.loads((RESULTS / "ptq161_runs.json").read_text())["runs"][run].get("artifact")
    if art is None or not (ROOT / art).is_dir():
        raise SystemExit(f"{name}: no saved artifact; run `python -m benchmarks.compare --rows {name} --redo {name}`")
    return str(ROOT / art), row


def run_model(name: str, tasks: list[str], limit: int | None, batch_size: int) -> dict:
    """Evaluate one model in this process."""
    from ptq161 import load
    from ptq161.eval.zeroshot import evaluate_zeroshot
    from ptq161.pipeline.convert import dequantize_model_in_place
    from ptq161.utils import peak_rss_mb

    spec, row = artifact_of(name)
    t0 = time.perf_counter()
    model, tok = load(spec)
    dequantize_model_in_place(model)  # packed scoring gives the same numbers, the dense matmul is faster
    res = evaluate_zeroshot(model, tok, tasks, limit=limit, batch_size=batch_size)
    return {
        "name": name,
        "model": str(Path(spec).relative_to(ROOT)) if spec.startswith(str(ROOT)) else spec,
        "stored_bits_per_weight": row["stored_bits_per_weight"],
        "wikitext2_ppl": row.get("wikitext2_ppl"),
        "artifact_commit": row.get("git_commit"),
        **res.to_dict(),
        "wall_seconds": time.perf_counter() - t0,
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": __import__("torch").get_num_threads(),
    }


def piqa_check_table(check: dict) -> str:
    """FP PIQA on all items: ptq161 eval vs lm-eval's CLI run here vs the reference quoted in issue 7."""
    n_piqa, piqa = check["n_samples"]["piqa"], check["tasks"]["piqa"]
    cli = stored("piqa_independent").get("independent")
    quoted = reference("piqa_issue7")

    def same(a: float | None, b: float) -> str:
        return "-" if a is None else ("yes" if round(a, 4) == round(b, 4) else "NO")

    rows = [
        (
            metric,
            f"{piqa[metric]:.4f}",
            "-" if cli is None else f"{cli[metric]:.4f}",
            same(None if cli is None else cli[metric], piqa[metric]),
            f"{quoted[metric]:.4f}",
            same(quoted[metric], piqa[metric]),
        )
        for metric in ("acc", "acc_norm")
    ]
    head = ["metric", "ptq161 eval", "lm-eval CLI run here", "equal (4 decimals)", "run quoted in issue 7"]
    head.append("equal (4 decimals)")
    return f"## Harness check: FP PIQA, all {n_piqa} validation items ({check['wall_seconds']:.0f} s)\n\n" + (
        markdown_table(head, rows)
    )


def table_columns() -> list[tuple[str, str | None]]:
    """(task, metric) columns of the Table 2 analogue."""
    cols: list[tuple[str, str | None]] = []
    for t in TASK_ORDER:
        if t in ("lambada_openai", "lambada_standard"):
            cols += [(t, "acc"), (t, "perplexity")]
        elif t == "race":
            cols.append((t, None))
        else:
            cols.append((t, "acc"))
            if t != "winogrande":
                cols.append((t, "acc_norm"))
    return cols


def model_row(name: str, r: dict, cols: list[tuple[str, str | None]]) -> tuple:
    """One model's row: bits, WikiText-2 ppl, every task column, mean acc, wall time."""
    cells, accs = [], []
    for t, m in cols:
        if t in r["unavailable"]:
            cells.append("n/a")
        elif t in r["tasks"]:
            v = r["tasks"][t][m]
            cells.append(f"{v:.2f}" if m == "perplexity" else f"{100 * v:.1f}")
            if m == "acc":
                accs.append(v)
        else:
            cells.append("-")
    ppl = r.get("wikitext2_ppl")
    return (
        LABELS[name],
        round(r["stored_bits_per_weight"], 3),
        "-" if ppl is None else round(ppl, 1),
        *cells,
        f"{100 * sum(accs) / max(len(accs), 1):.1f}",
        round(r["wall_seconds"]),
    )


def render(store: dict, args: argparse.Namespace) -> None:
    parts = []
    check, table = store.get("piqa_full"), store.get("table", {})
    if check:
        parts.append(piqa_check_table(check))
    if table:
        cols = table_columns()
        head = ["model", "bits/w", "WikiText-2 ppl", *(f"{t} {m}" if m else t for t, m in cols), "mean acc", "wall s"]
        rows = [model_row(name, table[name], cols) for name in MODELS if name in table]
        limit = next(iter(table.values()))["limit"]
        parts.append(
            f"## Table 2 analogue (0-shot, first {limit} documents of each task)\n\n" + markdown_table(head, rows)
        )
    unavailable = next(iter(table.values()), {}).get("unavailable", [])
    k = sum(1 for t, m in table_columns() if m == "acc" and t not in unavailable)
    mean_se = f"{100 * (k * 0.25 / args.limit) ** 0.5 / max(k, 1):.1f}"
    stderr = f"{100 * (0.25 / args.limit) ** 0.5:.1f}"
    notes = note("zeroshot", limit=args.limit, stderr=stderr, k=k, mean_stderr=mean_se)
    if check:
        n_piqa, piqa = check["n_samples"]["piqa"], check["tasks"]["piqa"]
        quoted = reference("piqa_issue7")
        counts = f"{round(piqa['acc'] * n_piqa)} / {round(piqa['acc_norm'] * n_piqa)} correct of {n_piqa}"
        notes += " " + note(
            "zeroshot", "piqa_check", counts=counts, ref_acc=quoted["acc"], ref_acc_norm=quoted["acc_norm"]
        )
    older = [LABELS[n] for n in MODELS if n != "fp" and n in table and not table[n].get("artifact_commit")]
    if older:
        notes += " " + note("zeroshot", "older", rows=", ".join(older))
    threads = sorted({r.get("torch_threads") for r in table.values() if r.get("torch_threads")})
    if threads:
        notes += " " + note("zeroshot", "threads", threads="/".join(map(str, threads)))
    write_results(
        "zeroshot",
        "Zero-shot tasks on smollm2-135m (paper Table 2 analogue)",
        "\n\n".join(parts),
        {**store, "piqa_reference": reference("piqa_issue7")},
        notes,
        keep_meta=store if args.render_only else None,
        model="smollm2-135m",
        limit=args.limit,
        batch_size=args.batch_size,
    )


def main() -> None:
    from ptq161.eval.zeroshot import PAPER_TASKS

    ap = bench_parser(__doc__)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--limit", type=int, default=200, help="documents per task in the table (default: 200)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    def job(name: str) -> dict:
        if name == "piqa_full":  # the harness check: FP PIQA on all items
            return run_model("fp", ["piqa"], None, args.batch_size)
        return run_model(name, list(PAPER_TASKS), args.limit, args.batch_size)

    if serve_child(args, job):
        return
    saved = stored("zeroshot")
    store = {**saved, "piqa_full": saved.get("piqa_full"), "table": saved.get("table", {})}
    if not args.render_only:  # a table made with another --limit is redone
        store["table"] = {k: v for k, v in store["table"].items() if v["limit"] == args.limit}
    child_args = ["--batch-size", str(args.batch_size), "--limit", str(args.limit)]
    checks = {} if store["piqa_full"] is None else {"piqa_full": store["piqa_full"]}
    run_pending("benchmarks.zeroshot", checks, ["piqa_full"], args, child_args, lambda _n: None)
    store["piqa_full"] = checks.get("piqa_full")
    run_pending(
        "benchmarks.zeroshot", store["table"], args.models.split(","), args, child_args, lambda _n: render(store, args)
    )
    render(store, args)


if __name__ == "__main__":
    main()
