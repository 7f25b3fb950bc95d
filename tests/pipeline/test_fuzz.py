"""Fuzz: 300 seeded mutations and truncations of a small packed directory (with an fp32 head, and again
with an int8 and an int4 head), each loaded by ``ptq161 ppl``.

Every case must end in a load whose perplexity is finite, or a one-line error with exit code 2
(bad or damaged input) or 3 (a non-finite number): never an exception escaping the CLI (a
traceback), a hang, or a NaN printed as a result. Odd cases pass ``--no-verify``, so that the
damage reaches the parsers and the packed-format validation instead of the sha256 check.
"""

from __future__ import annotations

import contextlib
import io
import math
import random
import shutil
import signal
from pathlib import Path

import pytest
from tests.helpers import quantize_with

from ptq161 import CalibConfig
from ptq161.cli import main

CASES = 300
FILES = ("model.safetensors", "model.safetensors", "model.safetensors", "config.json", "ptq161.json", "tokenizer.json")


@pytest.fixture(scope="module", params=["fp32", "int8", "int4"], ids=["fp32-head", "int8-head", "int4-head"])
def packed(request, tmp_path_factory, tiny_model_dir_module, text_module) -> Path:
    out = tmp_path_factory.mktemp("fuzz") / "packed"
    calib = CalibConfig(dataset=f"text:{text_module}", nsamples=2, seqlen=64)
    quantize_with(str(tiny_model_dir_module), "ptq161", calib=calib, output=out, progress=False, head=request.param)
    return out


@pytest.fixture(scope="module")
def tiny_model_dir_module(tmp_path_factory) -> Path:
    from tests.helpers import save_model_dir, tiny_llama

    return save_model_dir(tiny_llama(), tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def text_module(tmp_path_factory) -> Path:
    from tests.helpers import SAMPLE_TEXT

    f = tmp_path_factory.mktemp("text") / "sample.txt"
    f.write_text(SAMPLE_TEXT)
    return f


def mutate(path: Path, rng: random.Random) -> str:
    """Damage ``path`` one of several ways; returns what was done."""
    data = bytearray(path.read_bytes())
    kind = rng.choice(["flip", "flip", "header", "truncate", "zero", "garbage", "delete"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "header":  # the first bytes: the safetensors header length or the JSON's start
        i = rng.randrange(min(len(data), 16))
        data[i] = rng.randrange(256)
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
    elif kind == "zero":
        start, n = rng.randrange(len(data)), rng.randint(1, 512)
        data[start : start + n] = bytes(len(data[start : start + n]))
    elif kind == "garbage":
        data = bytearray(rng.randbytes(rng.randint(0, 64)))
    else:
        path.unlink()
        return kind
    path.write_bytes(bytes(data))
    return kind


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


@pytest.mark.parametrize("block", range(10))
def test_damaged_packed_directories_end_in_a_result_or_a_one_line_error(block, packed, text_module, tmp_path):
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for seed in range(block * CASES // 10, (block + 1) * CASES // 10):
            rng = random.Random(seed)
            case = tmp_path / f"case{seed}"
            shutil.copytree(packed, case)
            target = case / rng.choice(FILES)
            before = target.read_bytes()
            kind = mutate(target, rng)
            changed = not target.exists() or target.read_bytes() != before
            args = ["ppl", str(case), "--datasets", f"text:{text_module}", "--seqlen", "64", "--max-windows", "1"]
            if seed % 2:
                args.append("--no-verify")
            out, err = io.StringIO(), io.StringIO()
            signal.alarm(60)
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    rc = main(args)
            except _Hang:
                pytest.fail(f"seed {seed} ({kind} {target.name}): hung")
            except BaseException as e:  # an exception escaping main is a traceback for the user
                pytest.fail(f"seed {seed} ({kind} {target.name}): {type(e).__name__}: {e}")
            finally:
                signal.alarm(0)
            what = f"seed {seed} ({kind} {target.name}, verify={not seed % 2})"
            errors = [line for line in err.getvalue().splitlines() if line.startswith("ptq161: error:")]
            if rc == 0:
                row = next(line for line in out.getvalue().splitlines() if line.startswith("| text:"))
                assert math.isfinite(float(row.split("|")[2])), f"{what}: a non-finite perplexity printed"
                # with the check on, only ptq161.json (it holds the manifest, not its own hash) or an
                # unchanged file (a mutation that undid itself) may load
                assert seed % 2 or not changed or target.name == "ptq161.json", f"{what}: passed the sha256 check"
            else:
                assert rc in (2, 3) and len(errors) == 1, f"{what}: rc {rc}, stderr {err.getvalue()[-300:]!r}"
            shutil.rmtree(case)
    finally:
        signal.signal(signal.SIGALRM, old)
