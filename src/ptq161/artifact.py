"""The output directory of ``ptq161 quantize``.

Layout (format 1, fake-quant): a plain Hugging Face model directory whose decoder
linears hold the dequantized weights (loads anywhere), plus ``ptq161_parts.safetensors``
(the stored parts each weight is rebuilt from exactly) and ``ptq161.json`` (method,
settings, calibration, per-block log, bits). ``ptq161.json`` is written last: a directory
without it is an unfinished run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .calibration.driver import STATE_DIR, unflatten_parts
from .errors import PTQ161Error
from .methods.base import Method, Parts

FORMAT_VERSION = 1
META = "ptq161.json"
PARTS = "ptq161_parts.safetensors"


def check_output_dir(path: Path, resume: bool) -> None:
    """Refuse directories that hold something else, a finished result, or (without --resume) a partial run."""
    if not path.exists():
        return
    if not path.is_dir():
        raise PTQ161Error(f"output '{path}' exists and is not a directory")
    entries = {p.name for p in path.iterdir()}
    if not entries:
        return
    if META in entries:
        raise PTQ161Error(f"output '{path}' already holds a finished result; choose another --output or remove it")
    if STATE_DIR in entries:
        if not resume:
            raise PTQ161Error(f"output '{path}' holds an interrupted run; pass --resume to continue it")
        return
    raise PTQ161Error(f"output '{path}' is not empty and holds something else; choose another --output")


def write_artifact(path: Path, model: Any, tokenizer: Any, parts: dict[str, Parts], meta: dict[str, Any]) -> None:
    """Write the model, parts and metadata; ``ptq161.json`` last, then drop the resume state."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    flat = {f"{layer}::{k}": v.contiguous() for layer, p in parts.items() for k, v in p.items()}
    tmp = path / f".{PARTS}.tmp"
    save_file(flat, str(tmp), metadata={"format_version": str(FORMAT_VERSION)})
    os.replace(tmp, path / PARTS)
    from .utils import atomic_write_json

    atomic_write_json(path / META, {"format_version": FORMAT_VERSION, **meta})
    shutil.rmtree(path / STATE_DIR, ignore_errors=True)


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``ptq161.json`` of an output directory, or None for a plain model directory."""
    f = Path(path) / META
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise PTQ161Error(f"{f} is corrupted: {e}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise PTQ161Error(f"{f} has format version {meta.get('format_version')}, this ptq161 reads {FORMAT_VERSION}")
    return meta


def read_parts(path: str | Path) -> dict[str, Parts]:
    """All stored parts of an output directory, keyed by layer path."""
    f = Path(path) / PARTS
    if not f.is_file():
        raise PTQ161Error(f"{path} holds no {PARTS}")
    try:
        return unflatten_parts(load_file(str(f)))
    except Exception as e:  # safetensors raises several types for damaged files
        raise PTQ161Error(f"{f} is unreadable: {str(e).splitlines()[0]}") from None


def bits_report(method: Method, parts: dict[str, Parts]) -> dict[str, Any]:
    """Per-layer and whole-model bits per weight (paper count and as stored) for the decoder linears."""
    layers = {}
    numel = stored = 0
    paper = 0.0
    for name, p in parts.items():
        lb = method.layer_bits(p)
        layers[name] = {
            "numel": lb.numel,
            "paper_bits_per_weight": lb.paper_bits,
            "stored_bits_per_weight": lb.stored_bits / lb.numel,
        }
        numel += lb.numel
        stored += lb.stored_bits
        paper += lb.paper_bits * lb.numel
    return {
        "numel": numel,
        "paper_bits_per_weight": paper / max(numel, 1),
        "stored_bits_per_weight": stored / max(numel, 1),
        "stored_bytes": stored / 8,
        "layers": layers,
    }


def verify_parts(method: Method, model: torch.nn.Module, parts: dict[str, Parts]) -> float:
    """Max |W_model - dequantize(parts)| over all layers (0.0 for a faithful artifact)."""
    worst = 0.0
    for name, p in parts.items():
        w = model.get_submodule(name).weight.detach().float().cpu()
        worst = max(worst, (w - method.dequantize(p)).abs().max().item())
    return worst
