"""``make demo``: quantize the embedded SmolLM2-135M with the demo recipe and compare with FP."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from ..api import evaluate_perplexity, load_model, quantize
from ..data import default_eval_corpus
from ..eval.report import markdown_table
from ..pipeline.recipe import DEFAULT_RECIPE
from ..utils import atomic_write_json
from .common import add_data_dir, positive_int
from .quantize import default_output


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("demo", help="quantize smollm2-135m with the demo recipe and compare with FP (`make demo`)")
    p.add_argument("--windows", type=positive_int, default=4, help="evaluation windows of 2048 tokens (default: 4)")
    p.add_argument("--recipe", default="demo", help="recipe to run (default: demo; see ptq161 recipes)")
    p.add_argument("--json", help="also write the result (perplexities, bits, machine, code paths) to this file")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    result = run_demo(data_dir=args.data_dir, windows=args.windows, recipe=args.recipe)
    if args.json:
        atomic_write_json(Path(args.json), result)
    return 0


def run_demo(*, data_dir: str | Path | None = None, windows: int = 4, recipe: str = "demo") -> dict[str, Any]:
    """FP vs quantized perplexity (first ``windows`` windows), bits per weight and time on smollm2-135m."""
    dataset = default_eval_corpus(data_dir)
    model, tok = load_model("smollm2-135m")
    fp = evaluate_perplexity(model, tok, [dataset], max_windows=windows, data_dir=data_dir)[0]
    del model
    with tempfile.TemporaryDirectory(prefix="ptq161-demo-") as tmp:
        t0 = time.perf_counter()
        res = quantize("smollm2-135m", recipe, output=Path(tmp) / "q", data_dir=data_dir)
        seconds = time.perf_counter() - t0
        q = evaluate_perplexity(res.model, tok, [dataset], max_windows=windows, data_dir=data_dir)[0]
    meta, rec = res.meta, res.meta["recipe"]
    bits = meta["bits"]["stored_bits_per_weight"]
    calib = rec["calibration"]
    print(f"\nsmollm2-135m, {dataset} ({fp.source}), first {fp.windows} windows of {fp.seqlen} tokens")
    print(
        f"recipe '{rec['name']}': {calib['nsamples']} x {calib['seqlen']} calibration tokens from "
        f"{meta['calibration_source']}, {rec['method_settings']['epochs']} epochs per block"
    )
    rows = [
        ("FP (dequantized Q4_1 GGUF)", fp.ppl, 32.0, "-"),
        (rec["method"], q.ppl, round(bits, 4), f"{seconds:.0f}"),
    ]
    print(markdown_table(["model", "ppl", "bits/weight (decoder linears, stored)", "quantize s"], rows))
    machine = meta["machine"]
    print(
        f"\nmachine: {machine['cpu_model']} ({', '.join(machine['cpu_features'])}), torch threads "
        f"{machine['torch_threads']}; code paths: {', '.join(f'{k}={v}' for k, v in machine['code_paths'].items())}"
    )
    out = default_output("smollm2-135m", DEFAULT_RECIPE, {})
    print(f"the default recipe (ptq161 recipes {DEFAULT_RECIPE}): ptq161 quantize smollm2-135m && ptq161 ppl {out}")
    return {
        "model": "smollm2-135m",
        "dataset": dataset,
        "windows": fp.windows,
        "fp_ppl": fp.ppl,
        "ppl": q.ppl,
        "stored_bits_per_weight": bits,
        "quantize_seconds": seconds,
        "recipe": rec,
        "machine": machine,
    }
