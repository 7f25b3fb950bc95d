"""`model.generate` through transformers on a packed model against the dense fp32 model, same process.

    .venv/bin/python -m benchmarks.hf_generate [--model DIR] [--runs 3]

The packed model (default: `ptq161 quantize smollm2-135m` as a user runs it, written by
benchmarks/general_calibration.py to outputs/general_calibration/smollm2-135m/cpu_mix) and the dense
fp32 model it came from (`ptq161.load("smollm2-135m")`) each generate 64 new tokens greedily, batch 1,
from the same 16-token prompt (`min_new_tokens=64`: no early end); the time is the whole
`model.generate` call (prefill included), median of the runs after one warm-up, the ways interleaved
(their order rotates from round to round, so that none always follows the dense model's cache-cold run):
- dense fp32: `model.generate` of the FP model;
- packed, `ptq161.load(DIR)` then `model.generate(...)` (no argument: the loaded model decodes on the engine);
- packed, `AutoModelForCausalLM.from_pretrained(DIR)` after `import ptq161`, `model.generate(...)`;
- packed, transformers' own loop on the model's forward (`type(model).generate(model, ...)`: what
  `model.generate` ran before the engine became its default);
- packed, the fused engine directly (`ptq161.runtime.generate.greedy_generate(..., engine="on")`).
All packed ways must produce the same tokens as the transformers loop on the forward (checked).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import OUTPUTS, bench_parser, write_results
from ptq161.eval.report import markdown_table

NEW_TOKENS = 64
PROMPT = "The history of the city begins in the early middle ages, when"


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(model_dir: str, runs: int) -> dict[str, Any]:
    """Seconds per ``model.generate`` call of each way (median) and the tokens each way made."""
    from transformers import AutoModelForCausalLM

    import ptq161
    from ptq161.runtime.generate import decode_path, greedy_generate

    dense, tok = ptq161.load("smollm2-135m")
    packed, _ = ptq161.load(model_dir, verify=False)
    auto = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tok(PROMPT, return_tensors="pt").input_ids[:, :16]
    kw = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.eos_token_id)
    ways: dict[str, Callable[[], torch.Tensor]] = {
        "dense_fp32": lambda: dense.generate(ids, **kw),
        "ptq161_load": lambda: packed.generate(ids, **kw),
        "auto_model": lambda: auto.generate(ids, **kw),
        "transformers_loop": lambda: type(packed).generate(packed, ids, **kw),
        "engine_direct": lambda: torch.tensor([greedy_generate(packed, ids, NEW_TOKENS, engine="on")[0]]),
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    tokens: dict[str, list[int]] = {}
    names = list(ways)
    for i in range(runs + 1):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = ways[name]
            with torch.inference_mode():
                sec, out = _timed(fn)
            if i:  # the first round warms up (numba compiles, caches fill)
                times[name].append(sec)
            tokens[name] = out[0, -NEW_TOKENS:].tolist()
    dense = times["dense_fp32"]
    return {
        "seconds": {k: statistics.median(v) for k, v in times.items()},
        # dense / way within each round, then the median: the machine's drift between rounds cancels
        "x_dense_per_round": {
            k: statistics.median(d / s for d, s in zip(dense, v, strict=True)) for k, v in times.items()
        },
        "all_seconds": times,
        "same_tokens_as_loop": {k: tokens[k] == tokens["transformers_loop"] for k in ways if k != "dense_fp32"},
        "prompt_tokens": ids.shape[1],
        "decode_path": decode_path(packed, "auto", ids.shape[1] + NEW_TOKENS),
    }


LABELS = {
    "dense_fp32": "dense fp32 `model.generate`",
    "ptq161_load": "packed, `ptq161.load` + `model.generate`",
    "auto_model": "packed, `AutoModelForCausalLM.from_pretrained` + `model.generate`",
    "transformers_loop": "packed, transformers' loop on the forward",
    "engine_direct": "packed, fused engine directly",
}


def main() -> None:
    ap = bench_parser(__doc__, redo=False, render_only=False)
    ap.add_argument("--model", default=str(OUTPUTS / "general_calibration" / "smollm2-135m" / "cpu_mix"))
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    r = measure(args.model, args.runs)
    rows = [
        (LABELS[k], round(s, 3), round(NEW_TOKENS / s, 1), f"{r['x_dense_per_round'][k]:.2f}x",
         r["same_tokens_as_loop"].get(k, "-"))
        for k, s in r["seconds"].items()
    ]  # fmt: skip
    head = ["way", "s per generate (median)", "tokens/s", "x dense fp32 (median of rounds)", "same tokens"]
    table = markdown_table(head, rows)
    write_results(
        "hf_generate", "model.generate through transformers: packed vs dense fp32", table, r,
        notes=__doc__.split("\n\n")[2] + f"\n\nDecode path of the packed model: {r['decode_path']}.",
        model=args.model, runs=args.runs, new_tokens=NEW_TOKENS,
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
