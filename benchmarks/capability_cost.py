"""What the per-layer capture and the engine's capability check cost on smollm2-135m's default commands.

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.capability_cost

In one process, on smollm2-135m (FP, and packed by the smoke recipe into outputs/capability_cost):
- the engine's check (``DecodeEngine.unsupported_reason``: the model's ``Computation`` against the
  engine's) against the greedy decode it guards (``greedy_generate`` with the engine, 32-token prompt,
  64 new tokens, the check included once, as ``ptq161 generate`` runs it);
- recording every layer's call (``record_layer_calls``: two forwards through recorders) against the
  whole capture of the cpu recipe's calibration windows (``capture_block_inputs``, 64 x 256 tokens).
Medians of several runs after one warm-up.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import OUTPUTS, bench_parser, recipe_budget, write_results
from ptq161.eval.report import markdown_table


def _median_s(fn: Callable[[], Any], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    import torch

    from ptq161 import load_model, quantize
    from ptq161.calibration import capture_block_inputs, record_layer_calls
    from ptq161.models import get_adapter
    from ptq161.runtime.engine import DecodeEngine
    from ptq161.runtime.generate import greedy_generate

    bench_parser(__doc__, redo=False, render_only=False).parse_args()
    packed = OUTPUTS / "capability_cost" / "smoke"
    if not (packed / "ptq161.json").is_file():
        quantize("smollm2-135m", "smoke", output=packed, progress=False)
    model = load_model(str(packed))[0]
    prompt = torch.randint(100, 40000, (1, 32), generator=torch.Generator().manual_seed(0))
    new = 64
    check = _median_s(lambda: DecodeEngine.unsupported_reason(model, prompt.shape[1] + new), runs=20)
    decode = _median_s(lambda: greedy_generate(model, prompt, new, engine="auto"), runs=3)
    fp = load_model("smollm2-135m")[0]
    adapter = get_adapter(fp)
    _, n, seqlen = recipe_budget("cpu")
    windows = torch.randint(100, 40000, (n, seqlen), generator=torch.Generator().manual_seed(0))
    record = _median_s(lambda: record_layer_calls(fp, adapter, windows), runs=5)
    capture = _median_s(lambda: capture_block_inputs(fp, adapter, windows), runs=3)
    rows = {
        "engine_check": {"seconds": check, "against": "greedy decode, engine (check included)", "base": decode},
        "layer_calls": {"seconds": record, "against": f"capture of {n} x {seqlen} tokens (included)", "base": capture},
    }
    table = markdown_table(
        ["part", "seconds", "against", "its seconds", "share"],
        [(k, round(r["seconds"], 4), r["against"], round(r["base"], 3), f"{r['seconds'] / r['base']:.2%}")
         for k, r in rows.items()],
    )  # fmt: skip
    write_results("capability_cost", "Cost of per-layer capture and of the engine's check (smollm2-135m)",
                  table, {"rows": rows}, notes=__doc__.split("\n\n")[2])  # fmt: skip


if __name__ == "__main__":
    main()
