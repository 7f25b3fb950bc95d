"""How long the default command (``ptq161 quantize MODEL``, no flags) would take on this machine, from its
three parts measured (issue 43: qwen2.5-coder-1.5b within 4 h on 2 cores).

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.recipe_time [--model qwen2.5-coder-1.5b]

In this process, torch's default threads, the default recipe (``resolve_recipe(None)``):
- ``block``: the recipe's block stage (its method and settings, its calibration windows: nsamples x seqlen
  of its calibration mix, seed) on the first ``--blocks`` decoder layers of the model (the others cut off:
  a block's work does not depend on the depth); seconds a block from the driver's per-block log;
- ``teacher`` and ``step``: ``benchmarks.ddp_e2e.step_cost`` with the recipe's method settings and
  end-to-end settings: the FP model's top-k targets of 2 windows of the recipe's seqlen (seconds a window),
  then ``--steps`` end-to-end steps of one window each (random packed parts: speed only; the first step
  includes compiling when the recipe compiles, so the mean is taken over the steps after it when there
  are several).
Projection: teacher x the recipe's end-to-end windows + block x decoder layers + step x the recipe's steps
(x its batch). Each part is measured here; the sum is a projection, not a run of the command: it leaves
out loading the model, the held-out KL evaluations and writing the output.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from benchmarks.common import bench_parser, results_name, stored, timing_note, write_results
from ptq161.eval.report import markdown_table

NAME = "recipe_time"
DEFAULT_MODEL = "qwen2.5-coder-1.5b"
TARGET_HOURS = 4.0


def block_seconds(model_spec: str, blocks: int) -> dict[str, Any]:
    """The default recipe's block stage on the first ``blocks`` decoder layers of ``model_spec``."""
    import torch
    from torch import nn

    from ptq161 import load_model, resolve_recipe
    from ptq161.data import calibration_windows
    from ptq161.methods import get_method
    from ptq161.models import get_adapter
    from ptq161.pipeline.driver import quantize_blockwise

    recipe = resolve_recipe(None)
    model, tok = load_model(model_spec)
    adapter = get_adapter(model)
    layers = adapter.decoder_layers(model)
    n_layers = len(layers)
    model.get_submodule(adapter.layers.rsplit(".", 1)[0]).set_submodule(
        adapter.layers.rsplit(".", 1)[1], nn.ModuleList(list(layers)[:blocks])
    )
    model.config.num_hidden_layers = blocks
    calib = recipe.calib
    windows, source = calibration_windows(
        calib.dataset, tok, nsamples=calib.nsamples, seqlen=calib.seqlen, seed=calib.seed
    )
    method = get_method(recipe.method)(recipe.method_config)
    contended = timing_note()
    t0 = time.perf_counter()
    res = quantize_blockwise(model, get_adapter(model), windows, method, progress=False)
    wall = time.perf_counter() - t0
    per_block = [log["seconds"] for log in res.block_logs]
    del model, res
    gc.collect()
    return {
        "layers": n_layers,
        "blocks_timed": blocks,
        "block_seconds": per_block,
        "block_stage_wall_seconds": wall,
        "calibration": {**calib.to_dict(), "source": source},
        "torch_threads": torch.get_num_threads(),
        "timing_contended_block": contended,
    }


def measure(model_spec: str, blocks: int, steps: int) -> dict[str, Any]:
    """Block, teacher and step times of the default recipe on ``model_spec``, and the projected total."""
    from benchmarks.ddp_e2e import step_cost
    from ptq161 import resolve_recipe

    recipe = resolve_recipe(None)
    b = block_seconds(model_spec, blocks)
    s = step_cost(model_spec, steps=steps, recipe=recipe)
    block = sum(b["block_seconds"]) / len(b["block_seconds"])
    e2e = recipe.e2e
    teacher_total = s["teacher_seconds_per_window"] * e2e.windows
    block_total = block * b["layers"]
    step_total = s["step_seconds_steady"] * e2e.steps * e2e.batch
    total = teacher_total + block_total + step_total
    return {
        "model": model_spec,
        "recipe": recipe.to_dict(),
        "block": b,
        "step": s,
        "projection": {
            "teacher_seconds": teacher_total,
            "block_stage_seconds": block_total,
            "e2e_seconds": step_total,
            "total_seconds": total,
            "target_seconds": TARGET_HOURS * 3600,
        },
    }


def render(r: dict[str, Any]) -> str:
    p, b, s, e2e = r["projection"], r["block"], r["step"], r["recipe"]["e2e"]
    block = sum(b["block_seconds"]) / len(b["block_seconds"])
    rows = [
        ("teacher targets", f"{s['teacher_seconds_per_window']:.1f} s a window", f"x {e2e['windows']} windows",
         f"{p['teacher_seconds'] / 60:.0f}"),
        ("block stage", f"{block:.1f} s a block (mean of {len(b['block_seconds'])})", f"x {b['layers']} blocks",
         f"{p['block_stage_seconds'] / 60:.0f}"),
        ("end-to-end stage", f"{s['step_seconds_steady']:.1f} s a one-window step", f"x {e2e['steps']} steps x "
         f"{e2e['batch']}", f"{p['e2e_seconds'] / 60:.0f}"),
        ("**projected total**", "", "", f"**{p['total_seconds'] / 60:.0f}** (target {p['target_seconds'] / 60:.0f})"),
    ]  # fmt: skip
    return markdown_table(["part", "measured", "times", "minutes"], rows)


def main() -> None:
    ap = bench_parser(__doc__, redo=False, render_only=True)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    name = results_name(NAME, args.model, DEFAULT_MODEL)
    r = stored(name) if args.render_only else measure(args.model, args.blocks, args.steps)
    table = render(r)
    notes = __doc__.split("\n\n")[2]
    contended = [c for c in (r["block"].get("timing_contended_block"), r["step"].get("timing_contended")) if c]
    if contended:
        notes += "\n\nContended: " + "; ".join(contended)
    write_results(
        name, f"The default command's time on {args.model}, projected from its parts", table, r, notes=notes,
        keep_meta=r if args.render_only else None, model=args.model, blocks=args.blocks, steps=args.steps,
    )  # fmt: skip
    print(table)


if __name__ == "__main__":
    main()
