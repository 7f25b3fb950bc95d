"""``make demo``: the main job on the embedded SmolLM2-135M and the default corpus."""

from __future__ import annotations

from pathlib import Path

from .api import evaluate_perplexity, load_model
from .data import default_eval_corpus
from .eval.report import markdown_table


def run_demo(*, data_dir: str | Path | None = None, windows: int = 4) -> int:
    """Evaluate FP smollm2-135m on the default corpus and print the result table."""
    dataset = default_eval_corpus(data_dir)
    model, tok = load_model("smollm2-135m")
    r = evaluate_perplexity(model, tok, [dataset], seqlen=2048, max_windows=windows, data_dir=data_dir)[0]
    print(f"dataset: {dataset} ({r.source}), first {r.windows} windows of {r.seqlen} tokens")
    print(markdown_table(["model", "ppl", "tok/s"], [("smollm2-135m FP", r.ppl, round(r.tokens_per_s))]))
    return 0
