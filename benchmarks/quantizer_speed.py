"""Quantizer speed (issue 18): the cpu-preset quantization of smollm2-135m, before and after, in one sitting.

Every row runs ``ptq161 quantize smollm2-135m --output DIR`` (all defaults: the cpu preset, block
stage then the end-to-end stage) in a fresh process, then evaluates DIR as saved (WikiText-2 and
C4, the first 8 windows of 2048 tokens, with this checkout's evaluation code):

- ``baseline``: the code of ``--baseline`` (a commit; default b4bee9b, the last one before the
  factored end-to-end products and bfloat16 training products), checked out in a git worktree
  under ``outputs/quantizer_speed/`` and put first on the child's ``PYTHONPATH``;
- ``fp32``: this checkout with ``--train-matmul float32``: the factored end-to-end products
  alone (exact arithmetic, float summation order aside);
- ``eager``: this checkout with ``--train-compile off --e2e-compile off``: both stages without
  ``torch.compile`` (the defaults until 2026-12-02);
- ``compile``: this checkout with ``--train-compile on --e2e-compile on`` (each block's training
  forward and loss through ``torch.compile``, one graph for all blocks; in the end-to-end stage
  every decoder layer through one compiled graph, a second one for the first layer, whose input
  needs no gradient);
- ``head``: this checkout with its defaults (``--train-matmul auto``: bfloat16 products on CPUs
  with AVX-512 BF16 / AMX; the cpu preset's ``compile auto``: compiled where a compiler exists).

The table gives the command's wall time, the block stage (sum of the per-block seconds in
ptq161.json), the end-to-end stage, peak RSS, perplexities and each row's time and perplexity
against the baseline's. Only same-sitting ratios mean anything on these machines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    OUTPUTS,
    RESULTS,
    bench_parser,
    command_line,
    git_commit,
    note,
    run_pending,
    serve_child,
    stored,
    table_perplexities,
    timing_note,
    write_results,
)
from ptq161.eval.report import markdown_table

# variant -> (the products' dtype setting, the extra quantize flags); the baseline predates the settings
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("float32", []),
    "fp32": ("float32", ["--train-matmul", "float32"]),
    "eager": ("auto", ["--train-compile", "off", "--e2e-compile", "off"]),
    "compile": ("auto", ["--train-compile", "on", "--e2e-compile", "on"]),
    "head": ("auto", []),
}
ROWS = tuple(VARIANTS)
WHERE = OUTPUTS / "quantizer_speed"


def baseline_source(commit: str) -> Path:
    """A git worktree of ``commit`` (created once); returns its ``src`` directory."""
    tree = WHERE / f"src_{commit}"
    if not tree.exists():
        WHERE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], check=True, capture_output=True)
    return tree / "src"


def run_row(name: str, args: argparse.Namespace) -> dict:
    """One row: the quantize command in a child process (baseline: on the baseline's source), then evaluation."""
    import shutil

    from ptq161 import load
    from ptq161.pipeline.output_dir import read_meta

    out = WHERE / name
    if out.exists():
        shutil.rmtree(out)
    env = baseline_env(args.baseline) if name == "baseline" else dict(os.environ)
    cmd = [sys.executable, "-m", "ptq161", "quantize", "smollm2-135m", "--output", str(out)]
    if name != "baseline":  # the defaults are not spelled out
        cmd += VARIANTS[name][1]
    contended = timing_note()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    meta = read_meta(out)
    ppl = table_perplexities(*load(str(out)), args.windows)
    logs = meta["block_logs"]
    e2e = meta.get("e2e_log") or {}
    return {
        "name": name,
        "command": " ".join(["ptq161", *cmd[3:]]).replace(str(RESULTS.parents[1]) + "/", ""),
        "source": f"git worktree of {args.baseline}" if name == "baseline" else "this checkout",
        "command_wall_seconds": wall,
        "quantize_seconds": meta["seconds"],
        "block_stage_seconds": sum(log["seconds"] for log in logs),
        "e2e_seconds": e2e.get("seconds"),
        "matmul_dtype": {log.get("matmul_dtype", "float32") for log in logs}.pop(),
        "e2e_matmul_dtype": e2e.get("matmul_dtype", "float32"),
        "peak_rss_mb": meta["peak_rss_mb"],
        "stored_bits_per_weight": meta["bits"]["stored_bits_per_weight"],
        "wikitext2_ppl": ppl["wikitext2"],
        "c4_ppl": ppl["c4"],
        "e2e_heldout_kl_after": e2e.get("heldout_kl_after"),
        "run": {  # each row says where and when it ran (rows of one table may come from different sittings)
            "git_commit": args.baseline if name == "baseline" else git_commit(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.gmtime(time.time() - wall)) + " (start)",
            "sitting": args.sitting,  # the invocation that ran it: rows of one sitting compare
        },
        **({"timing_contended": contended} if contended else {}),
    }


def step_times(variant: str) -> dict:
    """Seconds per block-training step (block 0, cpu-preset settings, 8 windows of 256 tokens) and per
    end-to-end step (5 windows of 256 tokens, block 0's trained parts in every block: the real stage's
    shapes) of the code this process imports (the baseline's source or this checkout)."""

    from benchmarks.common import block_zero
    from ptq161 import load
    from ptq161.methods import BlockContext
    from ptq161.methods.ptq161 import PTQ161, PTQ161Config
    from ptq161.pipeline.e2e import E2EConfig, teacher_topk, train_end_to_end

    model = load("smollm2-135m")[0]
    adapter, ids, block, linears, x, call, y, stats = block_zero(model)
    try:  # this checkout: the cpu recipe
        from ptq161 import resolve_recipe

        recipe = resolve_recipe("cpu")
        settings = recipe.method_config.to_dict()
        e2e_settings = {k: v for k, v in recipe.e2e.to_dict().items() if k not in ("steps", "heldout")}
        matmul_key, compile_key = "train_matmul", "train_compile"
    except ImportError:  # a baseline checkout from before recipes: its cpu preset
        from ptq161.config import get_preset

        preset = get_preset("cpu")
        settings = preset.method_defaults()
        e2e_settings = dict(getattr(preset, "e2e_settings", ()))  # the baseline's presets have none
        matmul_key, compile_key = "matmul", "compile"

    def flag(name: str) -> str | None:
        flags = VARIANTS[variant][1]
        return flags[flags.index(name) + 1] if name in flags else None

    if variant != "baseline":
        settings[matmul_key] = VARIANTS[variant][0]
        settings[compile_key] = flag("--train-compile") or settings.get(compile_key, "off")
        e2e_settings["compile"] = flag("--e2e-compile") or e2e_settings.get("compile", "off")
    state = {k: v.clone() for k, v in block.state_dict().items()}

    def block_run(epochs: int) -> tuple[float, dict]:
        block.load_state_dict(state)
        ctx = BlockContext(0, block, linears, x, x.clone(), y, stats, call)
        t0 = time.perf_counter()
        res = PTQ161(PTQ161Config(**{**settings, "epochs": epochs})).quantize_block(ctx)
        return time.perf_counter() - t0, res.parts

    block_run(1)  # warm-up
    t3, parts = block_run(3)
    t1, _ = block_run(1)
    block.load_state_dict(state)
    # end-to-end steps on the parts of block 0 put in every block (the shapes of the real stage)
    method = PTQ161(PTQ161Config(**settings))
    n_blocks = len(adapter.decoder_layers(model))
    all_parts = {f"{adapter.layers}.{i}.{name}": p for i in range(n_blocks) for name, p in parts.items()}
    teacher = teacher_topk(model, ids[:5], 64)

    def e2e_run(steps: int) -> float:
        cfg = E2EConfig(steps=steps, heldout=1, **e2e_settings)
        return train_end_to_end(model, method, all_parts, ids[:5], teacher, cfg, progress=False)[1]["seconds"]

    e2e_run(1), e2e_run(2)  # warm-up, both call sizes (one compiled round had a cold outlier)
    e6, e2 = e2e_run(6), e2e_run(2)
    return {"block_step_seconds": (t3 - t1) / 16, "e2e_step_seconds": (e6 - e2) / 4}


def baseline_env(commit: str) -> dict[str, str]:
    """This process's environment with the baseline's source first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(baseline_source(commit)), env.get("PYTHONPATH")]))
    return env


def step_rounds(store: dict, args: argparse.Namespace) -> None:
    """``--step-rounds`` rounds of ``step_times`` for every variant, each in a fresh child, interleaved."""
    import json

    store["steps"] = {v: [] for v in VARIANTS}
    for r in range(args.step_rounds):
        for variant in VARIANTS:
            env = baseline_env(args.baseline) if variant == "baseline" else dict(os.environ)
            cmd = [sys.executable, "-m", "benchmarks.quantizer_speed", "--child", f"steps:{variant}"]
            contended = timing_note()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"steps:{variant} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            store["steps"][variant].append({**row, **({"timing_contended": contended} if contended else {})})
            print(f"round {r + 1} {variant}: {json.dumps(row)}", flush=True)
        render(store, args)


def steps_table(steps: dict) -> str:
    """Medians per variant and the median of the per-round ratios against the baseline."""
    import statistics

    rows = []
    base = steps["baseline"]
    for variant, runs in steps.items():
        flags = "(the baseline commit's defaults)" if variant == "baseline" else " ".join(VARIANTS[variant][1])
        cells = [variant, flags or "(defaults)"]
        for key in ("block_step_seconds", "e2e_step_seconds"):
            ratios = [b[key] / r[key] for b, r in zip(base, runs, strict=False)]
            cells.append(
                f"{1e3 * statistics.median(r[key] for r in runs):.1f} ms "
                f"({statistics.median(ratios):.2f}x; rounds {', '.join(f'{q:.2f}' for q in ratios)})"
            )
        rows.append(cells)
    return markdown_table(["code", "flags", "block-training step (vs baseline)", "end-to-end step"], rows)


def ppl_vs(r: dict, base: dict | None, key: str) -> str:
    """A row's perplexity and its change against the baseline's."""
    return f"{r[key]:.2f}" + (f" ({100 * (r[key] / base[key] - 1):+.2f} %)" if base else "")


def render(store: dict, args: argparse.Namespace) -> None:
    rows = store["rows"]
    base = rows.get("baseline")
    table = []
    for name in ROWS:
        if name not in rows:
            continue
        r = rows[name]

        def vs(key: str, r: dict = r) -> str:
            return f"{base[key] / r[key]:.2f}x" if base and r.get(key) else "-"

        table.append(
            [
                name + (" (contended)" if r.get("timing_contended") else ""),
                f"{r['matmul_dtype']} / {r['e2e_matmul_dtype']}",
                f"{r['command_wall_seconds']:.0f} s ({vs('command_wall_seconds')})",
                f"{r['block_stage_seconds']:.0f} s ({vs('block_stage_seconds')})",
                f"{r['e2e_seconds']:.0f} s ({vs('e2e_seconds')})" if r.get("e2e_seconds") else "-",
                f"{r['peak_rss_mb']:.0f}",
                ppl_vs(r, base, "wikitext2_ppl"),
                ppl_vs(r, base, "c4_ppl"),
                f"{r['stored_bits_per_weight']:.4f}",
            ]
        )
    md = markdown_table(
        [
            "row",
            "products (block / e2e)",
            "whole command (speed-up)",
            "block stage",
            "end-to-end stage",
            "peak RSS MiB",
            "WikiText-2 (vs baseline)",
            "C4",
            "stored bits",
        ],
        table,
    )
    if store.get("steps"):
        md += "\n\nSingle steps, each variant in a fresh process, the variants interleaved round by round:\n\n"
        md += steps_table(store["steps"])
    if "rows_run" in store:
        run = store["rows_run"]
        old = [n for n in ROWS if n in rows and "run" not in rows[n]]
        if old:
            md += f"\n\nWhole-command rows {', '.join(old)}: `{run['command']}`, "
            md += f"commit {run['git_commit']}, {run['date']}."
    for n in ROWS:
        if n in rows and "run" in rows[n]:
            md += f"\n\nWhole-command row {n}: commit {rows[n]['run']['git_commit']}, {rows[n]['run']['date']}."
    sittings = {(rows[n].get("run") or {}).get("sitting") or str(rows[n].get("run")) for n in rows}
    if len(sittings) > 1:
        md += (
            "\n\nThe whole-command rows above come from different sittings: their speed-ups are not same-sitting "
            "ratios (this machine drifts by up to 2x); the single steps below are."
        )
    elif rows:
        md += f"\n\nAll whole-command rows ran in one sitting (its invocation started {sittings.pop()}), in turn."
    if "steps_run" in store:
        run = store["steps_run"]
        md += f"\n\nThe single steps: `{run['command']}`, commit {run['git_commit']}, {run['date']}."
    notes = note("quantizer_speed")
    write_results(
        "quantizer_speed",
        "Quantizer speed: cpu-preset quantization of smollm2-135m, before and after (issue 18)",
        md,
        store,
        notes=notes,
        keep_meta=store if args.render_only else None,
        baseline=args.baseline,
        windows=args.windows,
    )
    print(md)


def main() -> None:
    ap = bench_parser(__doc__)
    ap.add_argument("--baseline", default="b4bee9b", help="commit of the baseline row (default b4bee9b)")
    ap.add_argument("--rows", default=",".join(ROWS), help="rows to run, in this order (default: all)")
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows of 2048 tokens (default 8)")
    ap.add_argument(
        "--step-rounds", type=int, default=0, help="also time single steps of every variant, interleaved, N rounds"
    )
    ap.add_argument("--sitting", default=None, help=argparse.SUPPRESS)  # the parent's start, passed to its rows
    args = ap.parse_args()
    args.sitting = args.sitting or time.strftime("%Y-%m-%dT%H:%M:%S%z", time.gmtime())
    if serve_child(args, lambda name: step_times(name[6:]) if name.startswith("steps:") else run_row(name, args)):
        return
    store = stored("quantizer_speed")
    store.setdefault("rows", {})
    names = [n for n in args.rows.split(",") if n]
    child_args = ["--baseline", args.baseline, "--windows", str(args.windows), "--sitting", args.sitting]
    run_pending("benchmarks.quantizer_speed", store["rows"], names, args, child_args, lambda _n: render(store, args))
    if args.step_rounds and not args.render_only:
        start = time.strftime("%Y-%m-%dT%H:%M:%S%z") + " (start)"
        store["steps_run"] = {"command": command_line(), "git_commit": git_commit(), "date": start}
        step_rounds(store, args)
    render(store, args)


if __name__ == "__main__":
    main()
