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


@contextlib.contextmanager
def os_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise an I/O failure that a library reports in its own exception type (safetensors:
    ``... I/O error: File too large (os error 27)``) as the ``OSError`` it is, naming ``path``."""
    import re

    try:
        yield
    except OSError:
        raise
    except Exception as e:
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


def atomic_save_file(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` as a safetensors file at ``path`` via a temporary sibling and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with os_errors(path):
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
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
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


LOCK_NAME = ".ptq161-lock"  # held in an output directory while a run writes into it


def _lock_owner(lock: Path) -> int | None:
    """The pid written in a lock file, or None when it is unreadable."""
    try:
        return int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold ``path/.ptq161-lock`` (this process's pid) while a run writes into directory ``path``.

    A second run on the same directory gets a one-line ``PTQ161Error``; the lock of a process
    that no longer exists (a killed run) is taken over. The lock is removed on exit, and so is
    the directory when this run created it and left nothing in it. ``None``: no lock.
    """
    if path is None:
        yield
        return
    path = Path(path)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _lock_owner(lock)
            if pid is not None and pid != os.getpid() and _alive(pid):
                raise PTQ161Error(
                    f"output '{path}' is in use by another ptq161 run (pid {pid}); wait for it or choose another "
                    "--output"
                ) from None
            with contextlib.suppress(FileNotFoundError):  # stale: its process is gone
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        if created:
            with contextlib.suppress(OSError):  # only when empty
                path.rmdir()


def python_rng(seed: int) -> random.Random:
    """A private ``random.Random`` seeded with ``seed``."""
    return random.Random(seed)


def current_rss_bytes() -> int:
    """Resident set size of this process now, in bytes (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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
