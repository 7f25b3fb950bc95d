"""Helpers for benchmark scripts: results go to benchmarks/results/NAME.{json,md}."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from ptq161.eval.report import run_metadata
from ptq161.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def command_line() -> str:
    """The exact command that produced a result (relative to the repository root)."""
    script = Path(sys.argv[0]).resolve()
    module = ".".join(script.relative_to(RESULTS.parents[1]).with_suffix("").parts)
    return " ".join(
        shlex.quote(a) for a in ["PTQ161_DATA=../shared/data", ".venv/bin/python", "-m", module, *sys.argv[1:]]
    )


def write_results(name: str, title: str, table_md: str, data: dict[str, Any], notes: str = "", **settings: Any) -> None:
    """Write ``results/NAME.json`` (data + metadata) and ``results/NAME.md`` (table + how it was made)."""
    meta = run_metadata(**settings)
    meta["command"] = command_line()
    atomic_write_json(RESULTS / f"{name}.json", {**meta, **data})
    m = meta["machine"]
    md = (
        f"# {title}\n\n{table_md}\n\n"
        + (f"{notes.strip()}\n\n" if notes else "")
        + f"- command: `{meta['command']}`\n"
        + f"- date: {meta['date']}\n"
        + f"- machine: {m['cpu_count']} CPU cores, {m['platform']}, torch threads {m['torch_threads']}\n"
        + f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}\n"
        + f"- settings: {', '.join(f'{k}={v}' for k, v in settings.items())}\n"
    )
    atomic_write_text(RESULTS / f"{name}.md", md)


def run_child(module: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module --child ...`` in a fresh process; its last stdout line is a JSON row."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{module} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fp_perplexities(windows: int, model_spec: str = "smollm2-135m") -> dict[str, float]:
    """FP perplexity on the first ``windows`` windows of WikiText-2 test and C4 (GPTQ style)."""
    from ptq161 import evaluate_perplexity, load_model

    model, tok = load_model(model_spec)
    results = evaluate_perplexity(model, tok, ["wikitext2", "c4"], max_windows=windows, progress=False)
    return {r.dataset: r.ppl for r in results}


OUTPUTS = RESULTS.parents[1] / "outputs"  # quantized artifacts kept for later benchmarks (git-ignored)


def quantize_and_evaluate(
    method: str, cfg: Any, calib: Any, windows: int, save: Path | None = None, model: str = "smollm2-135m"
) -> dict[str, Any]:
    """Quantize ``model`` and evaluate WikiText-2 test and C4 on the first ``windows`` windows.

    With ``save`` the artifact is also written there (replacing an older one), so that later
    benchmarks (zero-shot tasks, preprocessing) evaluate exactly the model measured here.
    """
    import shutil
    import time

    from ptq161 import evaluate_perplexity, quantize
    from ptq161.utils import peak_rss_mb

    if save is not None and save.exists():
        shutil.rmtree(save)
    t0 = time.perf_counter()
    res = quantize(model, method, method_config=cfg, calib=calib, output=save, progress=False)
    seconds = time.perf_counter() - t0
    results = evaluate_perplexity(res.model, res.tokenizer, ["wikitext2", "c4"], max_windows=windows, progress=False)
    ppl = {r.dataset: r.ppl for r in results}
    return {
        "config": cfg.to_dict(),
        "calibration": calib.to_dict(),
        "calibration_source": res.meta["calibration_source"],
        "quantize_seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "stored_bits_per_weight": res.meta["bits"]["stored_bits_per_weight"],
        "paper_bits_per_weight": res.meta["bits"]["paper_bits_per_weight"],
        "wikitext2_ppl": ppl["wikitext2"],
        "c4_ppl": ppl["c4"],
        "eval_windows": windows,
        "block_logs": res.meta["block_logs"],
        **({"artifact": str(save.relative_to(RESULTS.parents[1]))} if save is not None else {}),
    }
