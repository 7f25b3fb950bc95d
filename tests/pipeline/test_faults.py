"""Faults: a second run on the same output, a stale lock, a full disk in the middle of a run."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptq161.cli import main
from ptq161.errors import PTQ161Error
from ptq161.pipeline import state as state_mod
from ptq161.pipeline.output_dir import META
from ptq161.utils import LOCK_NAME, output_lock


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / LOCK_NAME).write_text(f"{holder.pid}\n")
        with pytest.raises(PTQ161Error, match=f"in use by another ptq161 run \\(pid {holder.pid}\\)"):
            with output_lock(out):
                pass
        assert (out / LOCK_NAME).read_text() == f"{holder.pid}\n"  # the holder's lock stays
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_removed_afterwards(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(f"{_dead_pid()}\n")
    with output_lock(out):
        assert (out / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        (out / "result").write_text("x")
    assert not (out / LOCK_NAME).exists() and (out / "result").exists()


def test_a_lock_on_a_new_directory_leaves_nothing_when_nothing_was_written(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError), output_lock(out):
        raise RuntimeError("failed before writing")
    assert not out.exists()


def test_cli_refuses_a_locked_output_in_one_line(tiny_model_dir, text_file, tmp_path, capsys):
    out = tmp_path / "q"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(f"{holder.pid}\n")
        rc = main(
            [
                "quantize",
                str(tiny_model_dir),
                "--recipe",
                "smoke",
                "--calib-dataset",
                f"text:{text_file}",
                "--output",
                str(out),
            ]
        )
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "in use by another ptq161 run" in err


def test_a_full_disk_mid_run_is_one_line_leaves_no_result_and_resume_reaches_the_same_bytes(
    tiny_model_dir, text_file, tmp_path, monkeypatch, capsys
):
    args = [
        "quantize",
        str(tiny_model_dir),
        "--recipe",
        "smoke",
        "--calib-dataset",
        f"text:{text_file}",
        "--method",
        "rtn",
    ]
    ref = tmp_path / "ref"
    assert main([*args, "--output", str(ref)]) == 0
    real_save = state_mod.atomic_save_file
    calls = []

    def full_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:  # the second block's state
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_save(tensors, path, metadata)

    monkeypatch.setattr(state_mod, "atomic_save_file", full_disk)
    out = tmp_path / "q"
    capsys.readouterr()
    assert main([*args, "--output", str(out)]) == 4
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("ptq161: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err
    assert not (out / META).exists() and not (out / LOCK_NAME).exists()
    assert not [p for p in out.rglob("*.tmp")]  # no half-written tensor file
    monkeypatch.setattr(state_mod, "atomic_save_file", real_save)
    assert main([*args, "--output", str(out), "--resume"]) == 0
    for name in ("model.safetensors", "ptq161_parts.safetensors"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()


def test_files_are_never_unpickled(tmp_path):
    """Weights are read with safetensors only: no torch.load / pickle anywhere in the package."""
    src = Path(__file__).resolve().parents[2] / "src" / "ptq161"
    offenders = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if any(s in p.read_text() for s in ("torch.load(", "pickle.load", "import pickle"))
    ]
    assert offenders == []
