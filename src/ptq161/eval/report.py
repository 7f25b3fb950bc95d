"""Plain-text / Markdown tables and run metadata recorded in every output."""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats get 4 significant digits (or 2 decimals)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) >= 100 else f"{v:.4g}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, sep, *body])


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_id() -> str:
    """Vendor, family, model and stepping (Linux /proc/cpuinfo): virtual machines often report a bare model
    name ("AMD EPYC") for CPUs of different generations; these numbers tell them apart."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "stepping") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        return "unknown"
    return " ".join(f"{k} {v}" for k, v in fields.items()) or "unknown"


def run_metadata(**settings: Any) -> dict[str, Any]:
    """Date, machine, library versions and the given settings, for JSON outputs."""
    import torch
    import transformers

    from .._version import __version__
    from ..primitives.device import path_features

    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu_model": cpu_model(),
            "cpu_id": cpu_id(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernels torch dispatches to
            "cpu_features": path_features(),  # those that choose a code path here (ptq161.primitives.device)
        },
        "versions": {
            "ptq161": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "settings": settings,
    }
