"""``make demo``: quantize the embedded SmolLM2-135M with PTQ1.61 and compare with FP."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ..api import evaluate_perplexity, load_model, quantize
from ..config import PRESETS, CalibConfig
from ..data import default_eval_corpus
from ..eval.report import markdown_table
from ..methods.ptq161 import PTQ161Config
from .common import add_data_dir, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    p = sub.add_parser("demo", help="quantize smollm2-135m and compare with FP (what `make demo` runs)")
    p.add_argument("--windows", type=positive_int, default=4, help="evaluation windows of 2048 tokens (default: 4)")
    add_data_dir(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo."""
    return run_demo(data_dir=args.data_dir, windows=args.windows)


def run_demo(*, data_dir: str | Path | None = None, windows: int = 4, preset: str = "demo") -> int:
    """FP vs PTQ1.61 (``preset`` budget) perplexity, bits per weight and time on smollm2-135m."""
    dataset = default_eval_corpus(data_dir)
    p = PRESETS[preset]
    model, tok = load_model("smollm2-135m")
    fp = evaluate_perplexity(model, tok, [dataset], max_windows=windows, data_dir=data_dir)[0]
    del model
    with tempfile.TemporaryDirectory(prefix="ptq161-demo-") as tmp:
        t0 = time.perf_counter()
        res = quantize(
            "smollm2-135m",
            "ptq161",
            method_config=PTQ161Config(**p.method_defaults()),
            calib=CalibConfig(nsamples=p.nsamples, seqlen=p.seqlen),
            output=Path(tmp) / "q",
            data_dir=data_dir,
        )
        seconds = time.perf_counter() - t0
        q = evaluate_perplexity(res.model, tok, [dataset], max_windows=windows, data_dir=data_dir)[0]
    bits = res.meta["bits"]
    print(f"\nsmollm2-135m, {dataset} ({fp.source}), first {fp.windows} windows of {fp.seqlen} tokens")
    print(
        f"calibration: {p.nsamples} x {p.seqlen} tokens from {res.meta['calibration_source']}, "
        f"{p.epochs} epochs per block (preset '{preset}')"
    )
    rows = [
        ("FP (dequantized Q4_1 GGUF)", fp.ppl, 32.0, "-"),
        ("PTQ1.61", q.ppl, round(bits["stored_bits_per_weight"], 4), f"{seconds:.0f}"),
    ]
    print(markdown_table(["model", "ppl", "bits/weight (decoder linears, stored)", "quantize s"], rows))
    c = PRESETS["cpu"]
    print(
        f"\nfull CPU preset ({c.describe()}):\n"
        f"  ptq161 quantize smollm2-135m --preset cpu --output ptq161-out/smollm2-cpu && "
        f"ptq161 ppl ptq161-out/smollm2-cpu"
    )
    return 0
