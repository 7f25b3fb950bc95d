"""SIGKILL at each stage of ``ptq161 quantize``, then ``--resume``: the same artifact as an uninterrupted run.

Each kill happens in a real child process at a named point (the child wraps one function of
ptq161 so that it kills itself there): while loading the model, while capturing the first
block's inputs, inside a block, while a block's state is being written, and while the final
directory is being written (after the weights, before ``ptq161.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptq161.pipeline.output_dir import META
from ptq161.pipeline.state import STATE_DIR

CHILD = r"""
import os, signal, sys
stage, argv = sys.argv[1], sys.argv[2:]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def after(n, real, then=die):
    calls = []
    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            return then(*args, **kwargs)
        return real(*args, **kwargs)
    return wrapped

import safetensors.torch
import ptq161.pipeline.driver as driver
import ptq161.pipeline.output_dir as output_dir
import ptq161.pipeline.quantize as quantize

if stage == "loading":
    quantize.load_model = die
elif stage == "capture":
    driver.capture_block_inputs = die
elif stage == "block":  # the third forward through a block: inside block 0's calibration
    driver.run_block = after(3, driver.run_block)
elif stage == "saving_block":  # half a tensor file written under its temporary name, then killed
    def half_then_die(tensors, filename, metadata=None):
        open(filename, "wb").write(b"\x00" * 100)
        die()
    safetensors.torch.save_file = after(3, safetensors.torch.save_file, half_then_die)
elif stage == "final":  # the weights written, then killed while the metadata's temporary file is half written
    def half_json_then_die(path, obj):
        from pathlib import Path
        Path(path).with_name("." + Path(path).name + ".partial").write_text('{"format_ver')
        die()
    output_dir.atomic_write_json = half_json_then_die
from ptq161.cli import main
sys.exit(main(argv))
"""

STAGES = ["loading", "capture", "block", "saving_block", "final"]


def _run(args: list[str], stage: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, stage, *args] if stage else [sys.executable, "-m", "ptq161", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _artifact(out: Path) -> dict[str, bytes]:
    """Every file of a finished output but ptq161.json, whose timing fields differ run to run."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != META}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[str], Path]:
    from tests.helpers import SAMPLE_TEXT, save_model_dir, tiny_llama

    root = tmp_path_factory.mktemp("kill")
    model = save_model_dir(tiny_llama(num_hidden_layers=3), root / "tiny3")
    text = root / "text.txt"
    text.write_text(SAMPLE_TEXT)
    args = ["quantize", str(model), "--recipe", "smoke", "--calib-dataset", f"text:{text}", "--calib-nsamples", "4"]
    ref = root / "ref"
    assert _run([*args, "--output", str(ref)]).returncode == 0
    return args, ref


@pytest.mark.parametrize("stage", STAGES)
def test_a_kill_at_each_stage_resumes_to_the_same_artifact(stage, reference, tmp_path):
    args, ref = reference
    out = tmp_path / "out"
    killed = _run([*args, "--output", str(out)], stage)
    assert killed.returncode == -9, killed.stderr[-500:]
    assert not (out / META).exists()  # nothing finished is claimed
    resumed = _run([*args, "--output", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert _artifact(out) == _artifact(ref)  # byte-identical files, no leftovers (temporary files, state, lock)
    assert not (out / STATE_DIR).exists()
    meta, ref_meta = json.loads((out / META).read_text()), json.loads((ref / META).read_text())
    assert meta["files"] == ref_meta["files"] and meta["bits"] == ref_meta["bits"]
