"""``make demo``: quantize the embedded SmolLM2-135M with the demo recipe and compare with FP."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from ..api import evaluate_perplexity, load_model, quantize
from ..data import default_eval_corpora, default_eval_corpus
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


def demo_calibration(data_dir: str | Path | None) -> dict[str, str]:
    """The demo's calibration override: WikiText-2 (the papers' protocol, whose known answers
    benchmarks/known_answers.py keeps) when the data directory has it, else the default corpus."""
    return {"calib_dataset": "wikitext2"} if default_eval_corpus(data_dir) == "wikitext2" else {}


DATASET_NAMES = {"wikitext2": "WikiText-2", "c4": "C4", "wiki-sample": "Wikipedia sample"}


def run_demo(*, data_dir: str | Path | None = None, windows: int = 4, recipe: str = "demo") -> dict[str, Any]:
    """FP vs quantized perplexity (first ``windows`` windows), bits per weight and time on smollm2-135m."""
    datasets = default_eval_corpora(data_dir)
    model, tok = load_model("smollm2-135m")
    fp = evaluate_perplexity(model, tok, datasets, max_windows=windows, data_dir=data_dir)
    del model
    with tempfile.TemporaryDirectory(prefix="ptq161-demo-") as tmp:
        t0 = time.perf_counter()
        res = quantize("smollm2-135m", recipe, output=Path(tmp) / "q", data_dir=data_dir, **demo_calibration(data_dir))
        seconds = time.perf_counter() - t0
        q = evaluate_perplexity(res.model, tok, datasets, max_windows=windows, data_dir=data_dir)
    meta, rec = res.meta, res.meta["recipe"]
    bits = meta["bits"]["stored_bits_per_weight"]
    calib = rec["calibration"]
    names = [DATASET_NAMES.get(d, d) for d in datasets]
    print(f"\nsmollm2-135m, first {fp[0].windows} windows of {fp[0].seqlen} tokens of " + ", ".join(
        f"{n} ({r.source})" for n, r in zip(names, fp, strict=True)))  # fmt: skip
    print(
        f"recipe '{rec['name']}': {calib['nsamples']} x {calib['seqlen']} calibration tokens from "
        f"{meta['calibration_source']}, {rec['method_settings']['epochs']} epochs per block"
    )
    rows = [
        ("FP (dequantized Q4_1 GGUF)", *(r.ppl for r in fp), 32.0, "-"),
        (rec["method"], *(r.ppl for r in q), round(bits, 4), f"{seconds:.0f}"),
    ]
    head = ["model", *(f"{n} ppl" for n in names), "bits/weight (decoder linears, stored)", "quantize s"]
    print(markdown_table(head, rows))
    machine = meta["machine"]
    print(
        f"\nmachine: {machine['cpu_model']} ({', '.join(machine['cpu_features'])}), torch threads "
        f"{machine['torch_threads']}; code paths: {', '.join(f'{k}={v}' for k, v in machine['code_paths'].items())}"
    )
    out = default_output("smollm2-135m", DEFAULT_RECIPE, {})
    print(f"the default recipe (ptq161 recipes {DEFAULT_RECIPE}): ptq161 quantize smollm2-135m && ptq161 ppl {out}")
    return {
        "model": "smollm2-135m",
        "dataset": datasets[0],  # the known answer's (benchmarks/known_answers.py)
        "windows": fp[0].windows,
        "fp_ppl": fp[0].ppl,
        "ppl": q[0].ppl,
        "ppl_by_dataset": {d: {"fp": f.ppl, "quantized": r.ppl} for d, f, r in zip(datasets, fp, q, strict=True)},
        "stored_bits_per_weight": bits,
        "quantize_seconds": seconds,
        "recipe": rec,
        "machine": machine,
    }
