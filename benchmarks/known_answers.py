"""Known answers of the real-model checks, and how far they move between code paths.

Two checks on smollm2-135m, both with float32 training products (their recipes pin it):
- ``smoke``: the smoke recipe calibrated on WikiText-2 train, perplexity on the first 4 windows of
  256 tokens of WikiText-2 test (the default test run asserts it: tests/pipeline/test_quantize.py);
- ``demo``: what `make demo` runs (the demo recipe, first 4 windows of 2048 tokens).

A run on one CPU cannot reach the kernels of another, but it can switch the code paths a CPU
chooses between: torch's vectorised kernels (``ATEN_CPU_CAPABILITY``: default = scalar, avx2,
avx512), the oneDNN ISA (``ONEDNN_MAX_CPU_ISA``), the MKL code path (``MKL_ENABLE_INSTRUCTIONS``)
and the thread count. On this machine's CPU some of these switches change nothing (MKL ignores
them on AMD CPUs), so two more variants stand in for another CPU's float32 rounding: every weight
of the FP model moved by one unit in the last place, up or down at random (seeded), before the
same run. Each variant runs in a fresh process; the band a test
allows is ``BAND_FACTOR`` times the largest relative distance from the reference variant
(this CPU's own choices with 2 threads) measured here, and never below ``MIN_BAND``.

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.known_answers [--checks smoke,demo]
    .venv/bin/python -m benchmarks.known_answers --check-demo DEMO.json   # what `make demo` prints last
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, bench_parser, serve_child, stored, write_results

NAME = "known_answers"
BAND_FACTOR = 3.0
MIN_BAND = 1e-3  # relative
SMOKE_WINDOWS, SMOKE_SEQLEN = 4, 256
DEMO_WINDOWS = 4
# variant -> environment of its process; "reference" is the CPU's own choices
VARIANTS: dict[str, dict[str, str]] = {
    "reference": {},
    "threads_1": {"PTQ161_BENCH_THREADS": "1"},
    "aten_scalar": {"ATEN_CPU_CAPABILITY": "default"},
    "onednn_avx": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "mkl_sse42": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "ulp_seed1": {"PTQ161_BENCH_ULP_SEED": "1"},
    "ulp_seed2": {"PTQ161_BENCH_ULP_SEED": "2"},
}


def ulp_moved(seed: int) -> tuple[Any, Any]:
    """smollm2-135m with every floating-point parameter moved one ulp up or down (random, seeded)."""
    import torch

    import ptq161

    model, tok = ptq161.load_model("smollm2-135m")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            up = torch.rand(p.shape, generator=gen) < 0.5
            p.copy_(torch.where(up, torch.nextafter(p, p + 1), torch.nextafter(p, p - 1)))
    return model, tok


def smoke_check(data_dir: str | Path | None, ulp_seed: int | None = None) -> dict[str, Any]:
    """The default test run's real-model known answer: smoke recipe on WikiText-2, 4 x 256 test tokens.
    ``ulp_seed``: run it on the model moved by one ulp (``ulp_moved``) instead."""
    import ptq161

    model, tok = ("smollm2-135m", None) if ulp_seed is None else ulp_moved(ulp_seed)
    res = ptq161.quantize(model, "smoke", tokenizer=tok, calib_dataset="wikitext2", data_dir=data_dir, progress=False)
    r = ptq161.evaluate_perplexity(
        res.model, res.tokenizer, ["wikitext2"], seqlen=SMOKE_SEQLEN, max_windows=SMOKE_WINDOWS,
        data_dir=data_dir, progress=False,
    )[0]  # fmt: skip
    return {"ppl": r.ppl, "code_paths": res.meta["machine"]["code_paths"], "machine": res.meta["machine"]}


def demo_check(data_dir: str | Path | None, ulp_seed: int | None = None) -> dict[str, Any]:
    """`make demo`'s result (``ptq161.cli.demo.run_demo``); with ``ulp_seed`` the same recipe and
    evaluation on the model moved by one ulp."""
    import ptq161
    from ptq161.cli.demo import demo_calibration, run_demo

    if ulp_seed is None:
        r = run_demo(data_dir=data_dir, windows=DEMO_WINDOWS)
        return {"ppl": r["ppl"], "code_paths": r["machine"]["code_paths"], "machine": r["machine"]}
    model, tok = ulp_moved(ulp_seed)
    with tempfile.TemporaryDirectory() as tmp:  # written and packed, as the demo evaluates it
        res = ptq161.quantize(model, "demo", tokenizer=tok, output=Path(tmp) / "q", data_dir=data_dir, progress=False,
                              **demo_calibration(data_dir))  # fmt: skip
        q = ptq161.evaluate_perplexity(res.model, tok, ["wikitext2"], max_windows=DEMO_WINDOWS, data_dir=data_dir)[0]
    return {"ppl": q.ppl, "code_paths": res.meta["machine"]["code_paths"], "machine": res.meta["machine"]}


CHECKS = {"smoke": smoke_check, "demo": demo_check}


def child(name: str) -> dict[str, Any]:
    """One check in this (fresh) process: NAME = CHECK:VARIANT."""
    import torch

    check, _, _variant = name.partition(":")
    threads = int(os.environ.get("PTQ161_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    seed = os.environ.get("PTQ161_BENCH_ULP_SEED")
    out = CHECKS[check](os.environ.get("PTQ161_DATA"), None if seed is None else int(seed))
    out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out["threads"] = threads
    return out


def run_variant(check: str, variant: str) -> dict[str, Any]:
    env = {**os.environ, **VARIANTS[variant]}
    cmd = [sys.executable, "-m", "benchmarks.known_answers", "--child", f"{check}:{variant}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{check}:{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(rows: dict[str, Any]) -> dict[str, Any]:
    """Per check and code path: the reference answer and the measured band."""
    answers: dict[str, Any] = {}
    for check in CHECKS:
        runs = {k.partition(":")[2]: v for k, v in rows.items() if k.startswith(f"{check}:")}
        if "reference" not in runs:
            continue
        ref = runs["reference"]
        spread = max(abs(v["ppl"] / ref["ppl"] - 1) for v in runs.values())
        path = code_path_key(ref["code_paths"])
        answers[check] = {path: {"ppl": ref["ppl"], "rel_band": max(BAND_FACTOR * spread, MIN_BAND), "spread": spread}}
    return answers


def code_path_key(paths: dict[str, str]) -> str:
    """The code-path label a known answer is stored under (the training products' dtype decides it)."""
    return f"train_matmul={paths.get('train_matmul', 'float32')}"


def known_answer(check: str, code_paths: dict[str, str]) -> dict[str, Any] | None:
    """The stored known answer of ``check`` for this code path (``ppl``, ``rel_band``), or None."""
    return stored(NAME).get("answers", {}).get(check, {}).get(code_path_key(code_paths))


def render(store: dict[str, Any], keep_meta: dict[str, Any] | None = None) -> None:
    rows = []
    for name, r in store["rows"].items():
        check, _, variant = name.partition(":")
        env = " ".join(f"{k}={v}" for k, v in VARIANTS[variant].items()) or "(this CPU's own choices, 2 threads)"
        rows.append(f"| {check} | {variant} | `{env}` | {r['torch_cpu_capability']} | {r['ppl']:.4f} |")
    table = "| check | variant | environment | torch kernels | perplexity |\n|---|---|---|---|---|\n" + "\n".join(rows)
    answers = ["| check | code path | known answer | measured spread | band allowed |", "|---|---|---|---|---|"]
    for check, paths in store["answers"].items():
        for path, a in paths.items():
            answers.append(f"| {check} | {path} | {a['ppl']:.4f} | {a['spread']:.2e} | {a['rel_band']:.2e} |")
    write_results(
        NAME, "Known answers of the real-model checks across code paths", table + "\n\n" + "\n".join(answers),
        {"rows": store["rows"], "answers": store["answers"]},
        notes=__doc__.split("\n\n")[1] + "\n\n" + __doc__.split("\n\n")[2],
        keep_meta=keep_meta, band_factor=BAND_FACTOR, min_band=MIN_BAND,
    )  # fmt: skip


def check_demo(path: str) -> int:
    """Compare a `ptq161 demo --json` result with the known answer of its code path; print one line."""
    r = json.loads(Path(path).read_text())
    a = known_answer("demo", r["machine"]["code_paths"])
    key = code_path_key(r["machine"]["code_paths"])
    if a is None:
        print(f"known answer: none measured for code path {key} (benchmarks/results/{NAME}.md)")
        return 0
    rel = abs(r["ppl"] / a["ppl"] - 1)
    verdict = "matches it" if rel <= a["rel_band"] else "DIFFERS from it (a bug, or a code path not measured yet)"
    print(
        f"known answer ({key}, benchmarks/results/{NAME}.md): {a['ppl']:.2f} +- {100 * a['rel_band']:.2f} %; "
        f"this run {r['ppl']:.2f} {verdict}"
    )
    return 0  # the demo reports; the test suite (tests/pipeline/test_quantize.py) is the gate


def main() -> None:
    ap = bench_parser(__doc__, render_only=True)
    ap.add_argument("--checks", default=",".join(CHECKS), help="comma-separated checks to run")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants to run")
    ap.add_argument("--check-demo", help="compare a `ptq161 demo --json` file with the known answer")
    args = ap.parse_args()
    if serve_child(args, child):
        return
    if args.check_demo:
        sys.exit(check_demo(args.check_demo))
    old = stored(NAME)
    store = {"rows": dict(old.get("rows", {}))}
    redo = set(filter(None, args.redo.split(",")))
    if not args.render_only:
        for check in args.checks.split(","):
            for variant in args.variants.split(","):
                name = f"{check}:{variant}"
                if name in store["rows"] and name not in redo:
                    continue
                print(f"running {name} ...", flush=True)
                store["rows"][name] = run_variant(check, variant)
                print(f"  ppl {store['rows'][name]['ppl']:.4f}", flush=True)
    store["answers"] = summarize(store["rows"])
    render(store, keep_meta=old if args.render_only else None)
    print((RESULTS / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
