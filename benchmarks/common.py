"""Helpers for benchmark scripts: results go to benchmarks/results/NAME.{json,md}.

Every script follows one pattern: ``bench_parser`` (adds ``--redo``, ``--render-only`` and
the hidden ``--child``), ``serve_child`` (this process is one row's fresh child process),
``run_pending`` (run each missing row in a fresh child, keeping what is stored), tables
built from the stored data, and prose from ``benchmarks/notes/NAME.md`` (``note``).
Reference values quoted from elsewhere live in ``results/references.json`` with their source.
"""

from __future__ import annotations

import argparse
import json
import shlex
import string
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ptq161.eval.report import run_metadata
from ptq161.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
# the papers' calibration protocol, which the method comparisons keep (ptq161's default is the general mix)
PAPERS_CALIB = "wikitext2"
NOTES = Path(__file__).resolve().parent / "notes"
META_KEYS = ("date", "command", "machine", "versions", "settings")


def command_line() -> str:
    """The exact command that produced a result (relative to the repository root)."""
    script = Path(sys.argv[0]).resolve()
    module = ".".join(script.relative_to(RESULTS.parents[1]).with_suffix("").parts)
    return " ".join(
        shlex.quote(a) for a in ["PTQ161_DATA=../shared/data", ".venv/bin/python", "-m", module, *sys.argv[1:]]
    )


def results_name(base: str, model: str, default: str) -> str:
    """``base`` for the benchmark's default model, ``base_MODEL`` for another (one results file per model)."""
    return base if model == default else f"{base}_{model}"


def write_results(
    name: str,
    title: str,
    table_md: str,
    data: dict[str, Any],
    notes: str = "",
    keep_meta: dict[str, Any] | None = None,
    **settings: Any,
) -> None:
    """Write ``results/NAME.json`` (data + metadata) and ``results/NAME.md`` (table + how it was made).

    ``keep_meta``: the metadata of the stored run (``--render-only`` re-renders without re-running).
    """
    if keep_meta is not None:
        meta = {k: keep_meta[k] for k in META_KEYS}
    else:
        meta = run_metadata(**settings)
        meta["command"] = command_line()
        meta["machine"]["git_commit"] = git_commit()
    data = {k: v for k, v in data.items() if k not in META_KEYS}
    atomic_write_json(RESULTS / f"{name}.json", {**meta, **data})
    m = meta["machine"]
    md = (
        f"# {title}\n\n{table_md}\n\n"
        + (f"{notes.strip()}\n\n" if notes else "")
        + f"- command: `{meta['command']}`\n"
        + f"- date: {meta['date']}\n"
        + f"- machine: {m['cpu_count']} CPU cores, {m['platform']}, torch threads {m['torch_threads']}"
        + (f", {m['cpu_model']}, torch CPU capability {m['torch_cpu_capability']}" if "cpu_model" in m else "")
        + (f" ({m['cpu_id']}; features {', '.join(m['cpu_features'])})" if "cpu_id" in m else "")
        + "\n"
        + f"- git commit: {m.get('git_commit') or not_recorded(name)}\n"
        + f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}\n"
        + f"- settings: {', '.join(f'{k}={v}' for k, v in meta['settings'].items())}\n"
    )
    atomic_write_text(RESULTS / f"{name}.md", md)


def not_recorded(name: str) -> str:
    """What the footer says for results made before the commit was recorded: the commit that stored them."""
    root = RESULTS.parents[1]
    log = ["git", "log", "-1", "--format=%h %ad", "--date=short", "--", f"benchmarks/results/{name}.json"]
    stored_in = subprocess.run(log, cwd=root, capture_output=True, text=True).stdout.strip() or "not yet"
    return f"not recorded (run made before results recorded it; the JSON was last written in commit {stored_in})"


def git_commit() -> str:
    """The commit the benchmark code ran from (``+dirty`` when the tree had uncommitted changes)."""
    root = RESULTS.parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head + ("+dirty" if dirty.stdout.strip() else "")


def bench_parser(doc: str | None, redo: bool = True, render_only: bool = True) -> argparse.ArgumentParser:
    """The argument parser every benchmark starts from (``redo`` / ``render_only``: the script honours them)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.set_defaults(redo="", render_only=False)
    if redo:
        ap.add_argument("--redo", default="", help="comma-separated rows to recompute even if stored")
    if render_only:
        ap.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the stored JSON only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap


def rows_parser(doc: str | None, rows: Iterable[str]) -> argparse.ArgumentParser:
    """``bench_parser`` plus ``--rows`` (default: every row) and ``--windows`` (evaluation windows, default 8)."""
    ap = bench_parser(doc)
    ap.add_argument("--rows", default=",".join(rows), help="comma-separated rows to run (default: all)")
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows of 2048 tokens (default: 8)")
    return ap


def serve_child(args: argparse.Namespace, job: Callable[[str], dict[str, Any]]) -> bool:
    """In a child process (``--child NAME``): print ``job(NAME)`` as the last stdout line, return True."""
    if not args.child:
        return False
    print(json.dumps(job(args.child)))
    return True


def run_child(module: str, name: str, child_args: Iterable[str] = ()) -> dict[str, Any]:
    """Run ``python -m module --child NAME ...`` in a fresh process; its last stdout line is a JSON row."""
    cmd = [sys.executable, "-m", module, "--child", name, *child_args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_pending(
    module: str,
    rows: dict[str, Any],
    names: Iterable[str],
    args: argparse.Namespace,
    child_args: Iterable[str] = (),
    after: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every row of ``names`` not in ``rows`` (or named in ``--redo``) in a fresh child; ``after(name)`` each."""
    redo = set(filter(None, args.redo.split(",")))
    child_args = list(child_args)
    for name in names:
        if (name in rows and name not in redo) or args.render_only:
            continue
        print(f"running {name} ...", flush=True)
        rows[name] = run_child(module, name, child_args)
        if after is not None:
            after(name)
    return rows


def run_ppl_rows(
    module: str,
    store: dict[str, Any],
    key: str,
    names: Iterable[str],
    args: argparse.Namespace,
    render: Callable[[dict[str, Any], argparse.Namespace], None],
    child_args: Iterable[str] = (),
    results: str | None = None,
) -> None:
    """``run_pending`` for rows with WikiText-2 / C4 perplexity in ``store[key]``: print and re-render after each.

    With ``results`` (the store's ``results/NAME.json``), every row this process did not run is
    re-read from the file before each write, so that invocations running other rows at the same
    time (e.g. one thread each) do not overwrite each other's rows.
    """
    ran: set[str] = set()

    def after(name: str) -> None:
        ran.add(name)
        if results is not None:
            on_disk = stored(results).get(key, {})
            store[key].update({k: v for k, v in on_disk.items() if k not in ran})
        r = store[key][name]
        print(
            f"  {name}: wikitext2 {r['wikitext2_ppl']:.2f} c4 {r['c4_ppl']:.2f}, "
            f"{r['stored_bits_per_weight']:.3f} bits, {r['quantize_seconds']:.0f} s",
            flush=True,
        )
        render(store, args)

    run_pending(module, store[key], names, args, child_args, after)
    render(store, args)


def stored(name: str) -> dict[str, Any]:
    """The stored ``results/NAME.json`` (empty when absent)."""
    f = RESULTS / f"{name}.json"
    return json.loads(f.read_text()) if f.exists() else {}


def reference(key: str) -> dict[str, Any]:
    """A reference value quoted from elsewhere, with its ``source``, from ``results/references.json``."""
    return json.loads((RESULTS / "references.json").read_text())[key]


def note(name: str, section: str = "main", **values: Any) -> str:
    """Prose of ``notes/NAME.md``: the ``<!-- section -->`` part, ``$placeholders`` filled, lines joined."""
    parts: dict[str, list[str]] = {}
    current = None
    for line in (NOTES / f"{name}.md").read_text().splitlines():
        if line.startswith("<!-- ") and line.endswith(" -->"):
            current = parts.setdefault(line[5:-4].strip(), [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return string.Template(" ".join(parts[section])).substitute(values)


def table_perplexities(model: Any, tokenizer: Any, windows: int) -> dict[str, float]:
    """Perplexity on the first ``windows`` windows of 2048 tokens of WikiText-2 test and C4 (GPTQ style)."""
    from ptq161 import evaluate_perplexity

    results = evaluate_perplexity(model, tokenizer, ["wikitext2", "c4"], max_windows=windows, progress=False)
    return {r.dataset: r.ppl for r in results}


def fp_perplexities(windows: int, model_spec: str = "smollm2-135m") -> dict[str, float]:
    """FP perplexity on the first ``windows`` windows of WikiText-2 test and C4 (GPTQ style)."""
    from ptq161 import load_model

    return table_perplexities(*load_model(model_spec), windows)


OUTPUTS = RESULTS.parents[1] / "outputs"  # quantized artifacts kept for later benchmarks (git-ignored)


def interrupted_run(out: Path) -> float | None:
    """Logged block seconds of an interrupted quantization saved in ``out`` (progress saved, no result
    written yet), or None when there is nothing to resume."""
    import json

    from ptq161.pipeline.output_dir import read_meta
    from ptq161.pipeline.state import STATE_DIR

    progress = out / STATE_DIR / "progress.json"
    if not progress.is_file() or read_meta(out) is not None:
        return None
    return sum(log["seconds"] for log in json.loads(progress.read_text())["progress"]["logs"])


def resumed_note(earlier: float | None) -> dict[str, Any]:
    """The row keys that say a row resumed an interrupted run of ``earlier`` block seconds (empty if not)."""
    if not earlier:
        return {}
    return {"resumed_after_seconds": earlier, "timing_resumed": note("compare", "resumed", seconds=f"{earlier:.0f}")}


def quantize_and_evaluate(
    method: str,
    cfg: Any,
    calib: Any,
    windows: int,
    save: Path | None = None,
    model: str = "smollm2-135m",
    e2e: Any = None,
) -> dict[str, Any]:
    """Quantize ``model`` and evaluate WikiText-2 test and C4 on the first ``windows`` windows.

    With ``save`` the artifact is also written there (replacing an older one), so that later
    benchmarks (zero-shot tasks, preprocessing) evaluate exactly the model measured here; an
    interrupted run saved there is resumed (its earlier block seconds are added to the time).
    """
    import shutil
    import time

    from ptq161 import E2EConfig, Recipe, quantize
    from ptq161.utils import peak_rss_mb

    earlier = interrupted_run(save) if save is not None else None
    if save is not None and save.exists() and earlier is None:
        shutil.rmtree(save)
    t0 = time.perf_counter()
    recipe = Recipe(method, cfg, calib, e2e or E2EConfig())
    res = quantize(model, recipe, output=save, progress=False, resume=earlier is not None)
    seconds = time.perf_counter() - t0
    return {
        **result_row(res.meta, table_perplexities(res.model, res.tokenizer, windows), windows, save),
        "quantize_seconds": seconds + (earlier or 0.0),
        **resumed_note(earlier),
        "peak_rss_mb": peak_rss_mb(),
        "block_logs": res.meta["block_logs"],
        "e2e": None if e2e is None else e2e.to_dict(),
    }


def result_row(meta: dict[str, Any], ppl: dict[str, float], windows: int, artifact: Path | None) -> dict[str, Any]:
    """The fields every quantized row records, from a run's ``ptq161.json`` metadata and its perplexities."""
    import torch

    mib = packed_file_mib(artifact) if artifact is not None else None
    return {
        "config": meta["config"],
        "calibration": meta["calibration"],
        "calibration_source": meta["calibration_source"],
        "stored_bits_per_weight": meta["bits"]["stored_bits_per_weight"],
        "paper_bits_per_weight": meta["bits"]["paper_bits_per_weight"],
        "wikitext2_ppl": ppl["wikitext2"],
        "c4_ppl": ppl["c4"],
        "eval_windows": windows,
        "e2e": meta.get("e2e"),
        "e2e_log": meta.get("e2e_log"),
        "torch_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
        **({"machine": meta["machine"]} if "machine" in meta else {}),  # CPU, features, code paths of the run
        **({"artifact": str(artifact.relative_to(RESULTS.parents[1]))} if artifact is not None else {}),
        **({"file_mib": mib} if mib else {}),
    }


def packed_file_mib(artifact: Path) -> float | None:
    """The whole packed output directory in MiB (weights, embedding and head, config, tokenizer: its manifest
    in ``ptq161.json``), or None for a dense result (fake-quant weights: no compressed file to measure)."""
    from ptq161.pipeline.output_dir import read_meta

    meta = read_meta(artifact)
    if meta is None or meta.get("weights_format") != "packed":
        return None
    return sum(f["bytes"] for f in meta["files"].values()) / 2**20


def cpu_busy_share(seconds: float = 2.0) -> float:
    """Share of the machine's CPU time (0..1) used by other processes over ``seconds`` (Linux /proc/stat).

    With 2 threads on 2 cores a background process stalls torch's and numba's thread pools, so
    timings taken while this is above a few per cent are not comparable."""
    import os
    import time

    def ticks() -> tuple[int, int]:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    def own() -> int:
        parts = open(f"/proc/{os.getpid()}/stat").read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])  # utime + stime of this process

    (t0, i0), o0 = ticks(), own()
    time.sleep(seconds)
    (t1, i1), o1 = ticks(), own()
    total = max(t1 - t0, 1)
    return max(0.0, (total - (i1 - i0) - (o1 - o0)) / total)


def timing_note(threshold: float = 0.05) -> str | None:
    """None on a quiet machine, else a note for a row's ``timing_contended`` (other processes' CPU share)."""
    busy = cpu_busy_share()
    return None if busy <= threshold else f"other processes used {100 * busy:.0f} % of the CPU when timing started"


def block_zero(model: Any, windows: int = 8, seqlen: int = 256) -> tuple[Any, ...]:
    """Block 0 of ``model`` ready for a block-training step: (adapter, ids [windows, seqlen], block, its
    linears, inputs x, the BlockCall, outputs y, input statistics), from fixed random token windows."""
    import torch

    from ptq161.calibration.capture import capture_block_inputs, run_block
    from ptq161.calibration.stats import record_input_stats
    from ptq161.models import get_adapter

    adapter = get_adapter(model)
    ids = torch.randint(100, 40000, (windows, seqlen), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, calls = capture_block_inputs(model, adapter, ids)
    call = calls[0]
    block = adapter.decoder_layers(model)[0]
    linears = adapter.block_linears(block)
    with torch.no_grad(), record_input_stats(linears) as stats:
        y = run_block(block, x, call)
    return adapter, ids, block, linears, x, call, y, stats


def recipe_budget(name: str) -> tuple[int, int, int]:
    """(epochs, calibration windows, tokens per window) of the shipped recipe ``name``."""
    from ptq161 import resolve_recipe

    r = resolve_recipe(name)
    return r.method_config.epochs, r.calib.nsamples, r.calib.seqlen
