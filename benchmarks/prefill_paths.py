"""The two ways the fused engine can prefill a prompt: its own steps or the model's forward.

For each prompt length T, the packed model (default: ``ptq161 quantize smollm2-135m`` as a user
runs it, written by benchmarks/general_calibration.py) prefills the same T tokens (i) one engine
step per token (the last one through the head) and (ii) through the model's own forward (row tiles
rebuilt from the packed weights, BLAS over the T rows; up to 8 tokens the packed kernel per row),
median of ``--runs`` runs after a warm-up, the two interleaved. ``DecodeEngine`` takes the steps
up to ``STEP_PREFILL`` tokens: the last length where they are faster on the CPU measured here
should be at or above it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks.common import OUTPUTS, bench_parser, write_results
from ptq161.eval.report import markdown_table

LENGTHS = (1, 4, 8, 12, 16, 20, 24, 32, 64)


def measure(model_dir: str, runs: int) -> dict[str, Any]:
    """Median seconds of each prefill way per prompt length, and the largest difference of their logits."""
    import ptq161
    from ptq161.runtime.engine import STEP_PREFILL, DecodeEngine

    model, _ = ptq161.load(model_dir, verify=False)
    by_steps = DecodeEngine(model, max_len=max(LENGTHS) + 1, step_prefill=max(LENGTHS))
    by_forward = DecodeEngine(model, max_len=max(LENGTHS) + 1, step_prefill=0)
    rows = []
    g = torch.Generator().manual_seed(0)
    for n in LENGTHS:
        ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g)
        times: dict[str, list[float]] = {"steps": [], "forward": []}
        logits = {}
        for i in range(runs + 1):
            for name, eng in (("steps", by_steps), ("forward", by_forward))[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                logits[name] = eng.prefill(ids)
                if i:
                    times[name].append(time.perf_counter() - t0)
        steps, forward = statistics.median(times["steps"]), statistics.median(times["forward"])
        diff = (logits["steps"] - logits["forward"]).abs().max().item()
        rows.append({"tokens": n, "steps_s": steps, "forward_s": forward, "max_logit_diff": diff,
                     "same_argmax": int(logits["steps"].argmax()) == int(logits["forward"].argmax())})  # fmt: skip
    faster = [r["tokens"] for r in rows if r["steps_s"] < r["forward_s"]]
    return {"rows": rows, "step_prefill": STEP_PREFILL, "steps_faster_up_to": max(faster) if faster else 0}


def main() -> None:
    ap = bench_parser(__doc__, redo=False, render_only=False)
    ap.add_argument("--model", default=str(OUTPUTS / "general_calibration" / "smollm2-135m" / "cpu_mix"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    r = measure(args.model, args.runs)
    table = markdown_table(
        ["prompt tokens", "engine steps (ms)", "model forward (ms)", "steps / forward", "max logit diff", "argmax"],
        [(x["tokens"], round(x["steps_s"] * 1e3, 1), round(x["forward_s"] * 1e3, 1),
          f"{x['steps_s'] / x['forward_s']:.2f}", f"{x['max_logit_diff']:.2e}", x["same_argmax"]) for x in r["rows"]],
    )  # fmt: skip
    summary = (
        f"Steps faster up to {r['steps_faster_up_to']} tokens here; the engine takes them up to "
        f"{r['step_prefill']} (`STEP_PREFILL`)."
    )
    write_results(
        "prefill_paths", "Prefill: the engine's own steps against the model's forward", table, r,
        notes=__doc__.split("\n\n")[1] + "\n\n" + summary, model=args.model, runs=args.runs,
    )  # fmt: skip
    print(table)
    print(summary)


if __name__ == "__main__":
    main()
