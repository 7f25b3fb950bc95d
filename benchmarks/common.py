"""Helpers for benchmark scripts: results go to benchmarks/results/NAME.{json,md}."""

from __future__ import annotations

import shlex
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
