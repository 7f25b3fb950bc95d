"""The end-to-end stage on torch.distributed: 2 processes x 1 thread against 1 process x 2 threads, and what
8 machines would give the 1.5B.

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.ddp_e2e [--rows 1x2,2x1,step_1.5b] [--steps 24]

Rows (each in its own process; smollm2-135m, the smoke recipe's block stage on 8 windows of 256 tokens of
WikiText-2, then ``--steps`` end-to-end steps of 2 windows each, the same windows in the same order):
- ``1x2``: `ptq161 quantize ... --e2e-batch 2` in one process with 2 threads;
- ``2x1``: `torchrun --nproc-per-node 2 -m ptq161 quantize ... --e2e-batch 1`, one thread per process
  (gloo): each rank computes one window of a step, the gradients are summed by one all-reduce;
- ``step_1.5b``: one end-to-end step of one window on qwen2.5-coder-1.5b in this process (2 threads),
  speed only (random packed parts, the teacher from the FP model on the same windows), and the bytes one
  all-reduce of its trainable factors moves. From it, the expected time of the 1.5B end-to-end stage
  on 8 such machines (``estimate``, written out with its assumptions).

Step times come from the run's own e2e log (``step_seconds``: wall time of the training loop over its
steps; ``allreduce_seconds_per_step``: the part spent in the all-reduce).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import OUTPUTS, PAPERS_CALIB, bench_parser, run_child, serve_child, stored, timing_note
from benchmarks.common import write_results as _write
from ptq161.eval.report import markdown_table

NAME = "ddp_e2e"
ROWS = ("1x2", "2x1", "step_1.5b")
NETWORK_BYTES_PER_S = 125e6  # 1 Gbit/s Ethernet, the assumption of the 8-machine estimate
CPU_RECIPE_STEPS = 600  # the cpu recipe's end-to-end steps of one window each (the windows to distribute)


def _quantize_args(out: str, steps: int, batch: int) -> list[str]:
    return [
        "quantize", "smollm2-135m", "--recipe", "smoke", "--calib-dataset", PAPERS_CALIB, "--calib-nsamples", "8",
        "--calib-seqlen", "256", "--e2e-steps", str(steps), "--e2e-batch", str(batch), "--e2e-windows", "16",
        "--head", "fp32", "--output", out,
    ]  # fmt: skip


def quantize_row(row: str, steps: int) -> dict[str, Any]:
    """Run the ``1x2`` or ``2x1`` quantize and read its e2e log."""
    out = OUTPUTS / NAME / row
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "2" if row == "1x2" else "1"}
    if row == "1x2":
        cmd = [sys.executable, "-m", "ptq161", *_quantize_args(str(out), steps, 2)]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        cmd = [*launcher, "-m", "ptq161", *_quantize_args(str(out), steps, 1)]
    contended = timing_note()
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{row} failed:\n{done.stderr[-3000:]}")
    meta = json.loads((out / "ptq161.json").read_text())
    log = meta["e2e_log"]
    return {
        "row": row,
        "processes": 1 if row == "1x2" else 2,
        "threads_per_process": 2 if row == "1x2" else 1,
        "windows_per_step": log["windows_per_step"],
        "steps": log["steps"],
        "step_seconds": log["step_seconds"],
        "first_step_seconds": log["first_step_seconds"],
        "step_seconds_steady": log["step_seconds_after_first"] or log["step_seconds"],
        "allreduce_seconds_per_step": log["allreduce_seconds_per_step"],
        "allreduce_bytes": log["allreduce_bytes"],
        "kl_first": log["kl_first"],
        "kl_last": log["kl_last"],
        "job_seconds": time.perf_counter() - t0,
        "timing_contended": contended,
    }


def step_cost(model_spec: str = "qwen2.5-coder-1.5b", steps: int = 3, recipe: Any = None) -> dict[str, Any]:
    """One-window end-to-end steps on ``model_spec`` with random packed parts (speed only), in this process.
    ``recipe`` (a ``Recipe``): its method settings and end-to-end settings (default: PTQ1.61's defaults, top-k 64)."""
    import torch
    from tests.helpers import random_parts

    from ptq161 import load_model
    from ptq161.methods.ptq161 import PTQ161, PTQ161Config
    from ptq161.models import get_adapter
    from ptq161.pipeline.e2e import E2EConfig, teacher_topk, train_end_to_end

    torch.manual_seed(0)
    model, _ = load_model(model_spec)
    adapter = get_adapter(model)
    parts = {}
    for i, block in enumerate(adapter.decoder_layers(model)):
        for name, lin in adapter.block_linears(block).items():
            n = lin.in_features
            parts[f"{adapter.layers}.{i}.{name}"] = random_parts(lin.out_features, n, n // 5 + 1, seed=len(parts))
    seqlen = 256 if recipe is None else recipe.calib.seqlen
    windows = torch.randint(100, 30000, (2, seqlen), generator=torch.Generator().manual_seed(0))
    if recipe is None:
        cfg, method = E2EConfig(steps=steps, heldout=1, topk=64), PTQ161(PTQ161Config())
    else:
        cfg, method = dataclasses.replace(recipe.e2e, steps=steps, heldout=1, batch=1), PTQ161(recipe.method_config)
    t0 = time.perf_counter()
    teacher = teacher_topk(model, windows, cfg.topk)
    teacher_seconds = (time.perf_counter() - t0) / windows.shape[0]
    contended = timing_note()
    _, log = train_end_to_end(model, method, parts, windows, teacher, cfg, progress=False)
    n_params = sum(p["scale"].numel() + p["a"].numel() + p["b"].numel() + p["r2"].numel() for p in parts.values())
    return {
        "row": "step_1.5b",
        "model": model_spec,
        "window_tokens": windows.shape[1],
        "steps": steps,
        "step_seconds": log["step_seconds"],
        "first_step_seconds": log["first_step_seconds"],
        "step_seconds_steady": log["step_seconds_after_first"] or log["step_seconds"],
        "teacher_seconds_per_window": teacher_seconds,
        "trainable_factors": n_params,
        "allreduce_bytes": 8 * (n_params + 1),
        "torch_threads": torch.get_num_threads(),
        "timing_contended": contended,
    }


def estimate(step: dict[str, Any], machines: int = 8) -> dict[str, Any]:
    """The 1.5B end-to-end stage on ``machines`` machines like this one: the cpu recipe's windows split
    evenly (one window per machine and step), a ring all-reduce of the factors per step over the network."""
    windows = CPU_RECIPE_STEPS
    steps = -(-windows // machines)
    ring = 2 * (machines - 1) / machines * step["allreduce_bytes"] / NETWORK_BYTES_PER_S
    one = windows * step["step_seconds"]
    many = steps * (step["step_seconds"] + ring)
    return {
        "machines": machines,
        "windows": windows,
        "steps": steps,
        "one_machine_seconds": one,
        "allreduce_seconds_per_step": ring,
        "seconds": many,
        "speedup": one / many,
        "teacher_seconds_one_machine": 256 * step["teacher_seconds_per_window"],
        "teacher_seconds": -(-256 // machines) * step["teacher_seconds_per_window"],
    }


def render(data: dict[str, Any]) -> None:
    rows = data["rows"]
    table = []
    for key in ("1x2", "2x1"):
        r = rows.get(key)
        if r is None:
            continue
        share = (r["allreduce_seconds_per_step"] or 0) / r["step_seconds"]
        table.append([
            f"{r['processes']} x {r['threads_per_process']} thread(s)", r["windows_per_step"],
            f"{r['step_seconds']:.2f}", f"{r['windows_per_step'] / r['step_seconds']:.3f}", f"{100 * share:.1f} %",
            f"{r['allreduce_bytes'] / 1e6:.2f}", f"{r['kl_first']:.4f} -> {r['kl_last']:.4f}",
        ])  # fmt: skip
    md = markdown_table(
        ["smollm2-135m e2e", "windows/step", "s/step", "windows/s", "all-reduce share", "all-reduce MB", "KL"], table
    )
    notes = ""
    if "1x2" in rows and "2x1" in rows:
        ratio = rows["1x2"]["step_seconds"] / rows["2x1"]["step_seconds"]
        notes += f"2 processes x 1 thread run a step {ratio:.2f}x as fast as 1 process x 2 threads (same windows).\n\n"
    if "step_1.5b" in rows:
        s, e = rows["step_1.5b"], estimate(rows["step_1.5b"])
        notes += (
            f"qwen2.5-coder-1.5b, one window of {s['window_tokens']} tokens: {s['step_seconds']:.1f} s a step "
            f"(forward + backward, {s['torch_threads']} threads), teacher {s['teacher_seconds_per_window']:.1f} s a "
            f"window; {s['trainable_factors']:,} trainable factors, {s['allreduce_bytes'] / 1e6:.1f} MB an "
            f"all-reduce (float64).\n\n"
            f"Estimate, 8 such machines, the cpu recipe's {e['windows']} windows split evenly ({e['steps']} steps "
            f"of 8 windows), ring all-reduce at {NETWORK_BYTES_PER_S * 8 / 1e9:.0f} Gbit/s "
            f"({e['allreduce_seconds_per_step']:.2f} s a step): **{e['seconds'] / 60:.0f} min** against "
            f"{e['one_machine_seconds'] / 3600:.1f} h on one machine ({e['speedup']:.1f}x); the teacher pass "
            f"{e['teacher_seconds'] / 60:.1f} min against {e['teacher_seconds_one_machine'] / 60:.0f} min. What "
            "limits it: the compute of one window per machine and step (the all-reduce is a small share), then "
            "the block stage, which rank 0 runs alone (not distributed) before the stage while the others wait.\n"
        )
    _write(NAME, "The end-to-end stage on torch.distributed", md, data, notes, keep_meta=data.get("keep_meta"))


def main() -> None:
    ap = bench_parser(__doc__, redo=False)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    if serve_child(args, lambda name: step_cost() if name == "step_1.5b" else quantize_row(name, args.steps)):
        return
    data = stored(NAME) or {"rows": {}}
    if args.render_only:
        render({**data, "keep_meta": data})
        return
    for row in args.rows.split(","):
        print(f"running {row} ...", flush=True)
        data["rows"][row] = run_child("benchmarks.ddp_e2e", row, ["--steps", str(args.steps)])
        render(data)


if __name__ == "__main__":
    main()
