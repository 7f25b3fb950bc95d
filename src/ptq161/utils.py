"""Small helpers shared by orchestration code: atomic writes, seeding, resource readings."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import PTQ161Error


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_file(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` as a safetensors file at ``path`` via a temporary sibling and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: str | os.PathLike[str], hint: str = "") -> Any:
    """Parse the JSON file at ``path``; a damaged file is a one-line ``PTQ161Error`` (``hint`` says what to do)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise PTQ161Error(f"{path} is corrupted ({e}){hint}") from None


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``final`` on success.

    On any exception the temporary directory is removed and ``final`` is left untouched,
    so that a killed or failed run never leaves a half-written directory behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def python_rng(seed: int) -> random.Random:
    """A private ``random.Random`` seeded with ``seed``."""
    return random.Random(seed)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux: VmHWM; elsewhere ru_maxrss).

    On Linux ru_maxrss survives fork + exec, so a child started by a large parent would
    report the parent's peak; VmHWM belongs to the process's own address space.
    """
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / 1024 if sys.platform == "darwin" else r / 1024
