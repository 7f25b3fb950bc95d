"""How much of the FP model's next-token distribution lies outside its top k (the end-to-end stage's teacher).

For each model and corpus: the first ``--windows`` evaluation windows of 2048 tokens (the perplexity
protocol's), the FP model's probability outside its top-k logits per token (mean and median), the
share of real next tokens outside the top k, and the share of the FP negative log-likelihood those
tokens carry. A top-k KL that renormalises the teacher over its top k trains the student to give
those tokens nothing; ``--e2e-kl tail`` keeps their mass as one more category.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import write_results
from ptq161 import load_model
from ptq161.data import eval_tokens
from ptq161.eval.report import markdown_table


def tail_stats(logits: torch.Tensor, targets: torch.Tensor, k: int) -> dict[str, float]:
    """Statistics of the mass outside the top k: logits [T, V] float, targets int64 [T] (the next tokens)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = logp.topk(k, dim=-1)
    tail = 1 - top.values.exp().sum(-1)
    outside = ~(top.indices == targets[:, None]).any(-1)
    nll = -logp.gather(-1, targets[:, None])[:, 0]
    return {
        "tail_mass_mean": tail.mean().item(),
        "tail_mass_median": tail.median().item(),
        "targets_outside": outside.float().mean().item(),
        "nll_share_outside": (nll * outside).sum().item() / nll.sum().item(),
        "tokens": int(targets.numel()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--windows", type=int, default=2)
    args = ap.parse_args()
    rows, data = [], {}
    for spec in args.models.split(","):
        model, tok = load_model(spec)
        for corpus in ("wikitext2", "c4"):
            ids = eval_tokens(corpus, tok, seqlen=2048).tokens
            logits, targets = [], []
            with torch.no_grad():
                for i in range(args.windows):
                    w = ids[:, i * 2048 : (i + 1) * 2048]
                    logits.append(model(input_ids=w, use_cache=False).logits[0, :-1])
                    targets.append(w[0, 1:])
            s = tail_stats(torch.cat(logits), torch.cat(targets), args.topk)
            data[f"{spec}/{corpus}"] = s
            rows.append(
                (
                    spec,
                    corpus,
                    f"{100 * s['tail_mass_mean']:.1f} %",
                    f"{100 * s['tail_mass_median']:.1f} %",
                    f"{100 * s['targets_outside']:.1f} %",
                    f"{100 * s['nll_share_outside']:.1f} %",
                    s["tokens"],
                )
            )
        del model
    head = [
        "model",
        "corpus",
        f"mass outside top {args.topk} (mean)",
        "(median)",
        "next tokens outside",
        "their share of the NLL",
        "tokens",
    ]
    table = markdown_table(head, rows)
    notes = (
        f"The FP model on the first {args.windows} evaluation windows of 2048 tokens of each corpus (WikiText-2 test, "
        "C4 GPTQ-style). No timing."
    )
    write_results(
        "teacher_tail", "The end-to-end teacher's probability outside its top k", table, data, notes, **vars(args)
    )
    print(table)


if __name__ == "__main__":
    main()
