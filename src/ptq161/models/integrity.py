"""File integrity: sha256 manifests of the directories ptq161 writes, checked when they are read.

A manifest maps each file's path (relative, ``/``-separated) to its size and sha256. ptq161
output directories carry theirs in ``ptq161.json`` (key ``files``); a cached conversion of a
built-in model carries ``PTQ161_MANIFEST.json``. Loading checks sizes first (cheap) and then
hashes; the first file that differs is named in a one-line ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import PTQ161Error

OUTPUT_META = "ptq161.json"  # the metadata file of a ptq161 output directory (holds its manifest)
PREPROCESS_META = "ptq161_preprocess.json"  # the same for a `ptq161 preprocess` output
CACHE_MANIFEST = "PTQ161_MANIFEST.json"  # the manifest of a cached model conversion
CHUNK = 1 << 22


class IntegrityError(PTQ161Error):
    """A file differs from the size or sha256 recorded when it was written."""


def read_hashed(
    paths: Iterable[Path], sink: Callable[[bytes], Any] | None = None, chunk: int = CHUNK
) -> tuple[int, str]:
    """(total size, sha256 hex) of the files ``paths`` read in order, each block also passed to ``sink``."""
    digest = hashlib.sha256()
    size = 0
    for path in paths:
        with Path(path).open("rb") as f:
            while block := f.read(chunk):
                digest.update(block)
                size += len(block)
                if sink is not None:
                    sink(block)
    return size, digest.hexdigest()


def manifest(root: str | Path, skip: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes": n, "sha256": hex}}`` of every file under ``root``.

    ``skip`` names top-level entries (files or directories) left out, e.g. the metadata
    file that will hold the manifest, or a run's resume state.
    """
    root = Path(root)
    skipped = set(skip)
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts[0] in skipped:
            continue
        size, sha = read_hashed([path])
        out[rel.as_posix()] = {"bytes": size, "sha256": sha}
    return out


def verify_manifest(root: str | Path, files: dict[str, dict[str, Any]], what: str) -> None:
    """Check every file of ``files`` under ``root``: present, same size, same sha256.

    Sizes are compared for all files before any is hashed. ``what`` names the directory in
    the error (``"output 'out/'"``). Raises ``IntegrityError`` naming the first mismatch.
    """
    root = Path(root)
    if not isinstance(files, dict):
        raise IntegrityError(f"{what}: its file manifest is malformed")
    for rel, rec in files.items():
        path = root / rel
        if not isinstance(rec, dict) or not {"bytes", "sha256"} <= rec.keys():
            raise IntegrityError(f"{what}: its file manifest is malformed at '{rel}'")
        if not path.is_file():
            raise IntegrityError(f"{what}: '{rel}' is missing")
        size = path.stat().st_size
        if size != rec["bytes"]:
            raise IntegrityError(f"{what}: '{rel}' has {size:,} bytes, {rec['bytes']:,} were written")
    for rel, rec in files.items():
        if read_hashed([root / rel])[1] != rec["sha256"]:
            raise IntegrityError(f"{what}: '{rel}' is damaged (its sha256 differs from the one recorded when written)")


def verify_output_dir(root: str | Path) -> bool:
    """Check a ptq161 output directory against the manifest in its ``ptq161.json`` (or
    ``ptq161_preprocess.json``).

    Returns False (nothing checked) for a directory without one, or written before manifests
    existed; raises ``IntegrityError`` on a mismatch.
    """
    checked = False
    for name in (OUTPUT_META, PREPROCESS_META):
        meta_path = Path(root) / name
        if not meta_path.is_file():
            continue
        try:
            files = json.loads(meta_path.read_text()).get("files")
        except (ValueError, AttributeError, UnicodeDecodeError):
            raise PTQ161Error(f"{meta_path} is not valid JSON (damaged or not written by ptq161)") from None
        if files is not None:
            verify_manifest(root, files, f"output '{root}'")
            checked = True
    return checked


def write_cache_manifest(root: str | Path) -> None:
    """Record the manifest of a cached model conversion (every file but the manifest itself)."""
    files = manifest(root, skip=(CACHE_MANIFEST,))
    (Path(root) / CACHE_MANIFEST).write_text(json.dumps(files, indent=1) + "\n")


def verify_cache(root: str | Path) -> bool:
    """Check a cached conversion against its manifest; False when it has none (written by an older ptq161)."""
    path = Path(root) / CACHE_MANIFEST
    if not path.is_file():
        return False
    try:
        files = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"cache '{root}': {CACHE_MANIFEST} is damaged") from None
    verify_manifest(root, files, f"cache '{root}'")
    return True
