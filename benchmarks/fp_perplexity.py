"""FP perplexity of smollm2-135m: WikiText-2 test (first 8 windows and full), C4 in both styles.

The first-8-window WikiText-2 number is also computed independently with plain
transformers (``model(ids, labels=ids).loss`` per window) and the two are compared.
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.common import note, write_results
from ptq161 import evaluate_perplexity, load_model
from ptq161.data import eval_tokens
from ptq161.eval.report import markdown_table


def independent_first_windows(model, tokens: torch.Tensor, seqlen: int, k: int) -> float:
    """exp(mean of the HF loss of the first k windows): an independent reference computation."""
    losses = []
    with torch.no_grad():
        for i in range(k):
            w = tokens[:, i * seqlen : (i + 1) * seqlen]
            losses.append(model(w, labels=w, use_cache=False).loss.item())
    return math.exp(sum(losses) / k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--wikitext-windows", type=int, default=None, help="default: the full test split")
    ap.add_argument("--c4-windows", type=int, default=64, help="first K of the 256 C4 windows")
    args = ap.parse_args()

    model, tok = load_model(args.model)
    wt = evaluate_perplexity(model, tok, ["wikitext2"], seqlen=args.seqlen, max_windows=args.wikitext_windows)[0]
    first8 = math.exp(sum(wt.window_nll[:8]) / 8)
    ref8 = independent_first_windows(model, eval_tokens("wikitext2", tok).tokens, args.seqlen, 8)
    c4 = evaluate_perplexity(model, tok, ["c4", "c4-new"], seqlen=args.seqlen, max_windows=args.c4_windows)

    rows = [
        ("wikitext2 (test)", "first 8", round(first8, 4), 8, wt.source),
        ("wikitext2 (test), plain transformers", "first 8", round(ref8, 4), 8, wt.source),
        ("wikitext2 (test)", "full split", round(wt.ppl, 4), wt.windows, wt.source),
        *[(f"{r.dataset} ({r.note})", f"first {r.windows} of 256", round(r.ppl, 4), r.windows, r.source) for r in c4],
    ]
    table = markdown_table(["dataset", "windows used", "FP ppl", "windows", "data file"], rows)
    rel = abs(first8 / ref8 - 1)
    notes = note("fp_perplexity", rel=f"{rel:.2e}")
    data = {
        "wikitext2_first8": first8,
        "wikitext2_first8_plain_transformers": ref8,
        "relative_difference": rel,
        "results": {"wikitext2": wt.to_dict(), **{r.dataset: r.to_dict() for r in c4}},
    }
    write_results(
        "fp_perplexity",
        "FP perplexity of smollm2-135m",
        table,
        data,
        notes,
        model=args.model,
        seqlen=args.seqlen,
        c4_windows=args.c4_windows,
    )
    print(table)


if __name__ == "__main__":
    main()
