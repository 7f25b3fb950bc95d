"""Reliability: every bad input and fault we try, what the command printed, its exit code, what was left.

Each case runs ``python -m ptq161 ...`` in a fresh process, as a user would, on small models
built here (a tiny LLaMA, its packed PTQ1.61 output, GPT-NeoX / Phi / custom-code variants) and
on the real smollm2-135m cache. Then the 300 fuzz cases of ``tests/pipeline/test_fuzz.py`` are
tallied, and the cost of the sha256 verification is timed on smollm2-135m.

    PTQ161_DATA=../shared/data .venv/bin/python -m benchmarks.reliability
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import bench_parser, write_results

CHILD_FSIZE = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from ptq161.cli import main
sys.exit(main(sys.argv[2:]))
"""


@dataclass
class Case:
    """One bad input or fault: how to set it up, the command, what a correct outcome is."""

    name: str
    expect: str  # "error" (non-zero exit, one line) or "ok"
    build: Callable[[Path], list[str]]  # -> the ptq161 arguments (may create files under the root)
    output: str | None = None  # an output directory name under the root, checked for leftovers
    then: list[str] = field(default_factory=list)  # a follow-up command (e.g. --resume), must succeed
    wrapper: list[str] = field(default_factory=list)  # python -c CODE ARGS... instead of -m ptq161


def _python(args: list[str], wrapper: list[str], env: dict[str, str], timeout: int = 900) -> tuple[int, str, str]:
    cmd = [sys.executable, *(["-c", *wrapper] if wrapper else ["-m", "ptq161"]), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def _last_line(text: str) -> str:
    lines = [s.strip() for s in text.replace("\r", "\n").splitlines() if s.strip()]
    return lines[-1] if lines else ""


def _left(out: Path | None) -> str:
    """What an output directory holds after the command."""
    if out is None:
        return "-"
    if not out.exists():
        return "nothing"
    names = {p.name for p in out.iterdir()}
    if "ptq161.json" in names or "ptq161_preprocess.json" in names:
        return "finished result"
    if not names:
        return "empty directory"
    if names <= {".ptq161-state", ".ptq161-lock"}:
        return "resumable state only" + (" + lock" if ".ptq161-lock" in names else "")
    return "PARTIAL: " + ", ".join(sorted(names))[:80]


class Fixtures:
    """The small models and files the cases use, made once under ``root``."""

    def __init__(self, root: Path) -> None:
        from tests.helpers import SAMPLE_TEXT, save_model_dir, tiny_llama

        from ptq161 import CalibConfig, Recipe, quantize

        self.root = root
        self.text = root / "text.txt"
        self.text.write_text(SAMPLE_TEXT)
        self.short = root / "short.txt"
        self.short.write_text("too short")
        self.empty = root / "empty.txt"
        self.empty.write_text("")
        self.model = save_model_dir(tiny_llama(), root / "tiny")
        self.packed = root / "packed"
        calib = CalibConfig(dataset=f"text:{self.text}", nsamples=2, seqlen=64)
        quantize(str(self.model), Recipe("ptq161", calib=calib), output=self.packed, progress=False)
        self.calib = ["--recipe", "smoke", "--calib-dataset", f"text:{self.text}"]
        self.ppl_text = ["--datasets", f"text:{self.text}", "--seqlen", "64", "--max-windows", "2"]

    def copy(self, src: Path, name: str) -> Path:
        dst = self.root / name
        shutil.copytree(src, dst)
        return dst


def _edit_tensors(model_dir: Path, fn) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def _overwrite_bytes(path: Path, offset_from_end: int, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end : -offset_from_end + n] = os.urandom(n)
    path.write_bytes(bytes(data))


def cases(fx: Fixtures) -> list[Case]:
    """The catalogue (at least 40)."""
    from tests.helpers import save_model_dir, tiny_llama

    t, m, p = fx.ppl_text, str(fx.model), fx.packed

    def ppl_on(d: Path, *extra: str) -> list[str]:
        return ["ppl", str(d), *t, *extra]

    def damaged_weights(r: Path) -> Path:
        d = fx.copy(p, "damaged")
        _overwrite_bytes(d / "model.safetensors", 4000)
        return d

    def nan_weight(r: Path) -> list[str]:
        d = fx.copy(fx.model, "nanw")
        _edit_tensors(d, lambda ts: ts["model.layers.1.mlp.up_proj.weight"].view(-1).__setitem__(5, math.nan))
        return ppl_on(d)

    def overflow(name: str) -> Path:
        d = fx.copy(fx.model, name)

        def big(ts):
            ts["model.layers.1.mlp.up_proj.weight"] *= 1e25
            ts["model.layers.1.mlp.down_proj.weight"] *= 1e25

        _edit_tensors(d, big)
        return d

    def bad_index(r: Path) -> list[str]:
        d = fx.copy(p, "badidx")
        _edit_tensors(d, lambda ts: ts["model.layers.0.mlp.down_proj.sal_idx"].__setitem__(0, 30000))
        return ppl_on(d, "--no-verify")

    def nan_factor(r: Path) -> list[str]:
        d = fx.copy(p, "nanfactor")
        _edit_tensors(d, lambda ts: ts["model.layers.1.self_attn.q_proj.a"].__setitem__(2, math.nan))
        return ppl_on(d, "--no-verify")

    def format_version(r: Path) -> list[str]:
        d = fx.copy(p, "fmt99")
        cfg = json.loads((d / "config.json").read_text())
        cfg["quantization_config"]["format_version"] = 99
        (d / "config.json").write_text(json.dumps(cfg))
        return ppl_on(d, "--no-verify")

    def arch(name: str) -> Path:
        import torch
        from transformers import PhiConfig, PhiForCausalLM

        torch.manual_seed(0)
        small = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        return save_model_dir(
            PhiForCausalLM(PhiConfig(**small, architectures=["PhiForCausalLM"])).eval(), fx.root / name
        )

    def custom_code(r: Path) -> list[str]:
        d = save_model_dir(tiny_llama(), r / "custom")
        (d / "configuration_custom.py").write_text(
            "from transformers import LlamaConfig\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom'\n"
        )
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(model_type="custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
        (d / "config.json").write_text(json.dumps(cfg))
        return ppl_on(d)

    def encoder_only(r: Path) -> list[str]:
        from transformers import BertConfig, BertForMaskedLM

        d = r / "bert"
        BertForMaskedLM(
            BertConfig(vocab_size=260, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
        ).save_pretrained(d)
        return ["quantize", str(d), *fx.calib, "--output", str(r / "out_bert")]

    def locked(r: Path) -> list[str]:
        out = r / "out_locked"
        out.mkdir()
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        fx.sleepers.append(sleeper)
        (out / ".ptq161-lock").write_text(f"{sleeper.pid}\n")
        return ["quantize", m, *fx.calib, "--output", str(out)]

    def finished(r: Path) -> list[str]:
        return ["quantize", m, *fx.calib, "--output", str(fx.copy(p, "out_finished"))]

    def interrupted(name: str) -> Path:
        out = fx.root / name
        (out / ".ptq161-state").mkdir(parents=True)
        (out / ".ptq161-state" / "progress.json").write_text(json.dumps({"fingerprint": "0" * 16, "progress": {}}))
        return out

    def dir_without_config(r: Path) -> list[str]:
        (r / "noconfig").mkdir()
        (r / "noconfig" / "weights.bin").write_bytes(b"x")
        return ["ppl", str(r / "noconfig"), *t]

    def damaged_cache(r: Path) -> list[str]:
        from ptq161.models.loading import builtin_dir

        cache = r / "cache"
        real = builtin_dir("smollm2-135m", verify=True)
        shutil.copytree(real, cache / "models" / real.name)
        _overwrite_bytes(cache / "models" / real.name / "model.safetensors", 100_000)
        fx.env_extra["damaged smollm2-135m cache: rebuilt from its package"] = {"PTQ161_CACHE": str(cache)}
        return ["ppl", "smollm2-135m", *t]

    fx.sleepers = []
    fx.env_extra = {}
    q = ["quantize", m, *fx.calib]
    return [
        Case("unknown model name", "error", lambda r: ["ppl", "no-such-model", *t]),
        Case("a file given as the model", "error", lambda r: ["ppl", str(fx.text), *t]),
        Case("a directory without config.json", "error", dir_without_config),
        Case("hub id without network", "error", lambda r: ["ppl", "someone/some-model", *t]),
        Case("empty text file", "error", lambda r: ["ppl", m, "--datasets", f"text:{fx.empty}", "--seqlen", "64"]),
        Case(
            "text shorter than a window",
            "error",
            lambda r: ["ppl", m, "--datasets", f"text:{fx.short}", "--seqlen", "64"],
        ),
        Case("missing text file", "error", lambda r: ["ppl", m, "--datasets", "text:/nonexistent.txt"]),
        Case("unknown dataset name", "error", lambda r: ["ppl", m, "--datasets", "imagenet"]),
        Case("--seqlen 0", "error", lambda r: ["ppl", m, *t[:2], "--seqlen", "0"]),
        Case("--seqlen above the model's context", "error", lambda r: ["ppl", m, *t[:2], "--seqlen", "4096"]),
        Case("--max-windows 0", "error", lambda r: ["ppl", m, *t[:4], "--max-windows", "0"]),
        Case("--device cuda on a machine without one", "error", lambda r: ["ppl", m, *t, "--device", "cuda"]),
        Case("--max-memory not a size", "error", lambda r: ["ppl", m, *t, "--max-memory", "lots"]),
        Case("unknown method", "error", lambda r: [*q, "--method", "magic", "--output", str(r / "o1")], "o1"),
        Case("unknown preset", "error", lambda r: ["quantize", m, "--preset", "huge", "--output", str(r / "o2")], "o2"),
        Case("a flag of another method", "error", lambda r: [*q, "--method", "rtn", "--salient-range", "row"]),
        Case("--bits 0", "error", lambda r: [*q, "--method", "rtn", "--bits", "0", "--output", str(r / "o3")], "o3"),
        Case("output is a file", "error", lambda r: [*q, "--output", str(fx.text)]),
        Case("output holds something else", "error", lambda r: [*q, "--output", str(fx.copy(fx.model, "o_else"))]),
        Case("output holds a finished result", "error", finished),
        Case("interrupted run without --resume", "error", lambda r: [*q, "--output", str(interrupted("o_int"))]),
        Case(
            "--resume with other settings",
            "error",
            lambda r: [*q, "--output", str(interrupted("o_int2")), "--resume"],
            "o_int2",
        ),
        Case("output locked by a running process", "error", locked, "out_locked"),
        Case(
            "calibration seqlen above the context",
            "error",
            lambda r: [*q, "--calib-seqlen", "4096", "--output", str(r / "o4")],
            "o4",
        ),
        Case(
            "disk full mid-run (file size limit), then --resume",
            "error",
            lambda r: ["60000", *q, "--output", str(r / "o_full")],
            "o_full",
            then=[*q, "--output", "{root}/o_full", "--resume"],
            wrapper=[CHILD_FSIZE],
        ),
        Case("packed weights overwritten (header intact)", "error", lambda r: ppl_on(damaged_weights(r))),
        Case("packed weights overwritten, --no-verify", "ok", lambda r: ppl_on(r / "damaged", "--no-verify")),
        Case("packed model.safetensors truncated", "error", lambda r: _truncated(fx, r)),
        Case("ptq161.json corrupted", "error", lambda r: _corrupt_meta(fx, r)),
        Case("packed format version unknown", "error", format_version),
        Case("salient index out of range (--no-verify)", "error", bad_index),
        Case("NaN in a packed factor (--no-verify)", "error", nan_factor),
        Case("config.json deleted", "error", lambda r: _deleted(fx, r, "config.json")),
        Case("tokenizer.json damaged (--no-verify)", "error", lambda r: _tokenizer(fx, r)),
        Case("damaged smollm2-135m cache: rebuilt from its package", "ok", damaged_cache),
        Case("NaN in an input weight", "error", nan_weight),
        Case("a block output overflows in perplexity", "error", lambda r: ppl_on(overflow("ovf1"))),
        Case(
            "a block output overflows in perplexity, onloaded",
            "error",
            lambda r: ppl_on(overflow("ovf2"), "--max-memory", "1KB"),
        ),
        Case(
            "training loss becomes NaN in a block",
            "error",
            lambda r: ["quantize", str(overflow("ovf3")), *fx.calib, "--output", str(r / "o_nan")],
            "o_nan",
        ),
        Case("custom code without --trust-remote-code", "error", custom_code),
        Case("an encoder-only model", "error", encoder_only, "out_bert"),
        Case(
            "Phi (generic adapter): quantize",
            "ok",
            lambda r: ["quantize", str(arch("phi")), *fx.calib, "--output", str(r / "o_phi")],
            "o_phi",
        ),
        Case("Phi (generic adapter): ppl of its output", "ok", lambda r: ppl_on(r / "o_phi")),
        Case(
            "Phi (generic adapter): generate",
            "ok",
            lambda r: ["generate", str(r / "o_phi"), "--prompt", "ab", "--max-new-tokens", "3"],
        ),
        Case("generate with an empty prompt", "error", lambda r: ["generate", str(p), "--prompt", ""]),
        Case("--engine on for a dense model", "error", lambda r: ["generate", m, "--prompt", "ab", "--engine", "on"]),
        Case("bench --against a missing model", "error", lambda r: ["bench", str(p), "--against", "nothing-here"]),
        Case("eval with an unknown task", "error", lambda r: ["eval", m, "--tasks", "nonsense_task"]),
        Case("info on a plain model directory", "error", lambda r: ["info", m]),
        Case(
            "preprocess into a directory holding something else",
            "error",
            lambda r: ["preprocess", m, "--output", str(fx.copy(fx.model, "pre_else"))],
        ),
    ]


def _truncated(fx: Fixtures, r: Path) -> list[str]:
    d = fx.copy(fx.packed, "trunc")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    return ["ppl", str(d), *fx.ppl_text]


def _corrupt_meta(fx: Fixtures, r: Path) -> list[str]:
    d = fx.copy(fx.packed, "badmeta")
    (d / "ptq161.json").write_bytes(b'{"format_version": 1, "files": {"mod\xb2')
    return ["ppl", str(d), *fx.ppl_text]


def _deleted(fx: Fixtures, r: Path, name: str) -> list[str]:
    d = fx.copy(fx.packed, "del_" + name)
    (d / name).unlink()
    return ["ppl", str(d), *fx.ppl_text]


def _tokenizer(fx: Fixtures, r: Path) -> list[str]:
    d = fx.copy(fx.packed, "badtok")
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NotAModel"')
    return ["ppl", str(d), *fx.ppl_text, "--no-verify"]


def run_cases(fx: Fixtures) -> list[dict]:
    """Run every case in a fresh process; one row each."""
    rows = []
    all_cases = cases(fx)
    try:
        for c in all_cases:
            args = c.build(fx.root)  # may record environment variables for itself (the cache case)
            env = {**os.environ, **fx.env_extra.get(c.name, {})}
            t0 = time.perf_counter()
            rc, out, err = _python(args, c.wrapper, env)
            seconds = time.perf_counter() - t0
            lines = err.replace("\r", "\n").splitlines()
            errors = [line for line in lines if line.startswith("ptq161") and ": error: " in line]  # ptq161 [cmd]:
            printed = errors[0] if errors else _last_line(err) or _last_line(out)
            follow = None
            if c.then:
                frc, _, ferr = _python([a.replace("{root}", str(fx.root)) for a in c.then], [], env)
                follow = {"rc": frc, "traceback": "Traceback" in ferr}
            out_dir = fx.root / c.output if c.output else None
            left = _left(out_dir)
            traceback = "Traceback" in err
            nan_result = rc == 0 and ("| nan" in out.lower() or " nan " in out.lower())
            correct = (rc != 0 and len(errors) == 1) if c.expect == "error" else rc == 0
            if follow is not None:
                correct = correct and follow["rc"] == 0 and not follow["traceback"]
            rows.append(
                {
                    "case": c.name,
                    "command": "ptq161 " + " ".join(a.replace(str(fx.root), "$TMP") for a in args),
                    "expected": c.expect,
                    "exit_code": rc,
                    "printed": printed.replace(str(fx.root), "$TMP")[:300],
                    "traceback": traceback,
                    "nan_result": nan_result,
                    "left_behind": left if follow is None else f"{left}; after --resume: {_left(out_dir)}",
                    "follow_up": follow,
                    "as_expected": correct and not traceback and not nan_result and not left.startswith("PARTIAL"),
                    "seconds": seconds,
                }
            )
            print(f"{rows[-1]['as_expected']!s:5} rc={rc} {c.name}: {rows[-1]['printed'][:110]}", flush=True)
    finally:
        for s in fx.sleepers:
            s.kill()
    return rows


def run_fuzz(fx: Fixtures) -> dict:
    """The 300 seeded cases of tests/pipeline/test_fuzz.py, tallied by outcome."""
    from tests.pipeline.test_fuzz import CASES, FILES, mutate

    from ptq161.cli import main

    tally: dict[str, int] = {}
    bad = []
    for seed in range(CASES):
        rng = random.Random(seed)
        case = fx.root / f"fuzz{seed}"
        shutil.copytree(fx.packed, case)
        target = case / rng.choice(FILES)
        kind = mutate(target, rng)
        args = ["ppl", str(case), *fx.ppl_text[:4], "--max-windows", "1", *(["--no-verify"] if seed % 2 else [])]
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(args)
        except BaseException as e:  # a traceback for the user
            rc = f"exception {type(e).__name__}"
            bad.append(f"seed {seed} {kind} {target.name}: {e}")
        key = f"{'no-verify' if seed % 2 else 'verify'}: {'exit ' + str(rc) if isinstance(rc, int) else rc}"
        tally[key] = tally.get(key, 0) + 1
        shutil.rmtree(case)
    return {"cases": CASES, "outcomes": dict(sorted(tally.items())), "tracebacks": bad}


def verification_cost(repeats: int = 3) -> dict:
    """Seconds to load smollm2-135m with and without the sha256 check (medians, page cache warm)."""
    from ptq161.models.loading import builtin_dir, load_model

    where = builtin_dir("smollm2-135m", verify=True)
    size = sum(p.stat().st_size for p in where.iterdir() if p.is_file())
    out = {"model": "smollm2-135m", "bytes_checked": size}
    for verify in (False, True, False, True):  # interleaved; the first pair warms the page cache
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            load_model("smollm2-135m", verify=verify)
            times.append(time.perf_counter() - t0)
        out["with_check_s" if verify else "without_check_s"] = statistics.median(times)
    out["check_s"] = out["with_check_s"] - out["without_check_s"]
    return out


def render(data: dict, keep_meta: dict | None = None) -> None:
    rows = data["cases"]
    table = [
        "| # | case | exit | printed (first error line) | left behind | as expected |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        printed = r["printed"].replace("|", "\\|")
        table.append(
            f"| {i} | {r['case']} | {r['exit_code']} | {printed} | {r['left_behind']} | "
            f"{'yes' if r['as_expected'] else '**no**'} |"
        )
    fz = data["fuzz"]
    vc = data["verification"]
    summary = (
        f"{len(rows)} cases: {sum(r['as_expected'] for r in rows)} as expected; tracebacks "
        f"{sum(r['traceback'] for r in rows)}; NaN printed as a result {sum(r['nan_result'] for r in rows)}; "
        f"partial outputs {sum(r['left_behind'].startswith('PARTIAL') for r in rows)}.\n\n"
        f"Fuzz: {fz['cases']} seeded mutations / truncations of a packed directory through `ptq161 ppl` "
        f"(odd seeds with --no-verify): "
        + ", ".join(f"{k} x{v}" for k, v in fz["outcomes"].items())
        + f"; exceptions escaping the CLI: {len(fz['tracebacks'])}.\n\n"
        f"Verification cost on {vc['model']} ({vc['bytes_checked'] / 2**20:.0f} MiB checked): load "
        f"{vc['without_check_s']:.2f} s without the check, {vc['with_check_s']:.2f} s with it "
        f"(+{vc['check_s']:.2f} s; medians of 3, page cache warm)."
    )
    write_results(
        "reliability",
        "Bad inputs and faults: what the user sees",
        summary + "\n\n" + "\n".join(table),
        data,
        "Exit codes: 2 bad input or damaged file, 3 non-finite number, 4 the system refused a write."
        + (f"\n\n{data['note']}" if data.get("note") else ""),
        keep_meta=keep_meta,
    )


def main() -> None:
    ap = bench_parser(__doc__, redo=False)
    args = ap.parse_args()
    if args.render_only:
        stored = json.loads((Path(__file__).parent / "results" / "reliability.json").read_text())
        render(stored, keep_meta=stored)
        return
    with tempfile.TemporaryDirectory(prefix="ptq161-reliability-") as tmp:
        fx = Fixtures(Path(tmp))
        data = {"cases": run_cases(fx), "fuzz": run_fuzz(fx), "verification": verification_cost()}
    render(data)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
