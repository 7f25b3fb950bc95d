import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptq161.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptq161", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["ppl", "/no/such/model"], "no such model"),
        (["ppl", "x", "--seqlen", "0"], "--seqlen"),
        (["ppl", "x", "--max-windows", "abc"], "--max-windows"),
        (["ppl", "x", "--datasets", "bogus"], "unknown dataset"),
        (["nosuchcommand"], "invalid choice"),
        (["quantize", "x", "--salient-ratio", "1.2"], "--salient-ratio"),
        (["quantize", "x", "--ratio", "0"], "--ratio"),  # the earlier spelling, checked the same way
        (["quantize", "x", "--calib-nsamples", "0"], "--calib-nsamples"),
        (["quantize", "x", "--method", "nosuch"], "--method"),
        (["quantize", "x", "--recipe", "huge"], "recipe 'huge' is neither a shipped recipe"),
        (["quantize", "x", "--epoch", "3"], "--epoch"),
        (["info", "/no/such/dir"], "not a ptq161 output"),
        (["quantize", "x", "--max-memory", "lots"], "--max-memory"),
        (["quantize", "x", "--device", "tpu9"], "--device"),
        (["quantize", "qwen2.5-coder-1.5b", "--dtype", "int4"], "--dtype"),
        (["quantize", "x", "--method", "rtn", "--e2e-kl", "topk"], "--e2e-kl"),  # no end-to-end stage: not ignored
        (["quantize", "x", "--e2e-steps", "0", "--e2e-windows", "64", "--e2e-train-signs"], "--e2e-windows"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, capsys):
    # in-process (a fresh interpreter per case cost 7-11 s each); an escaping exception fails the test
    try:
        rc = main(args)
    except SystemExit as stop:  # argparse's own errors
        rc = stop.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err


def test_bad_input_in_a_real_process_has_no_traceback():
    for args, needle in ((["ppl", "/no/such/model"], "no such model"), (["nosuchcommand"], "invalid choice")):
        p = run_cli(*args)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr
        assert "Traceback" not in p.stderr


def test_ppl_on_tiny_model_dir_writes_json(tiny_model_dir: Path, tmp_path: Path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    out = tmp_path / "res" / "ppl.json"
    rc = main(["ppl", str(tiny_model_dir), "--datasets", f"text:{text}", "--seqlen", "128", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    r = data["results"][f"text:{text}"]
    assert r["windows"] == (len(text.read_text()) // 128) and r["seqlen"] == 128 and r["tokens"] == r["windows"] * 128
    assert r["source"] == str(text) and r["ppl"] > 1
    assert data["settings"]["seqlen"] == 128 and "date" in data and "versions" in data
    assert f"{r['ppl']:.4g}" in printed


def test_text_shorter_than_a_window_fails_cleanly(tiny_model_dir: Path, tmp_path: Path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("too short")
    out = tmp_path / "ppl.json"
    rc = main(["ppl", str(tiny_model_dir), "--datasets", f"text:{text}", "--seqlen", "64", "--json", str(out)])
    assert rc == 2
    assert "fewer than one window" in capsys.readouterr().err
    assert not out.exists()


def test_help_lists_subcommands():
    p = run_cli("--help")
    assert p.returncode == 0 and "ppl" in p.stdout


def test_quantize_cli_bad_output_and_context(tiny_model_dir: Path, text_file: Path, tmp_path: Path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    p = run_cli("quantize", str(tiny_model_dir), "--calib-dataset", f"text:{text_file}", "--output", str(other))
    assert p.returncode == 2 and "holds something else" in p.stderr and "Traceback" not in p.stderr
    assert sorted(x.name for x in other.iterdir()) == ["keep.txt"]
    out = tmp_path / "q"
    p = run_cli(
        "quantize",
        str(tiny_model_dir),
        "--calib-dataset",
        f"text:{text_file}",
        "--calib-seqlen",
        "100000",
        "--output",
        str(out),
    )
    assert p.returncode == 2 and "exceeds the model's context" in p.stderr
    assert not out.exists()


def test_quantize_then_info_and_ppl(tiny_model_dir: Path, text_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "q"
    assert (
        main(
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
        == 0
    )
    info_json = tmp_path / "info.json"
    assert main(["info", str(out), "--json", str(info_json)]) == 0
    info = json.loads(info_json.read_text())
    assert len(info["layers"]) == 14
    # tiny 64-wide layers: the per-row fp16 factors (52 bits a row) cost ~0.8 bit per weight
    layers = info["layers"].values()
    weighted = sum(v["stored_bits_per_weight"] * v["numel"] for v in layers) / sum(v["numel"] for v in layers)
    assert info["stored_bits_per_weight"] == pytest.approx(weighted) and 2.3 < weighted < 2.6
    assert main(["ppl", str(out), "--datasets", f"text:{text_file}", "--seqlen", "256"]) == 0
    assert "method ptq161" in capsys.readouterr().out
    # the packed directory decodes through the fused engine; the dense tiny model cannot
    bench_json = tmp_path / "bench.json"
    args = ["--prompt-tokens", "8", "--new-tokens", "5", "--json", str(bench_json)]
    assert main(["bench", str(out), "--engine", "on", "--against", str(tiny_model_dir), *args[:4]]) == 2
    assert "cannot run this model" in capsys.readouterr().err
    assert main(["bench", str(out), "--against", str(tiny_model_dir), *args]) == 0
    res = json.loads(bench_json.read_text())
    assert res[str(out)]["engine"] and not res[str(tiny_model_dir)]["engine"]
    assert main(["generate", str(out), "--prompt", "ab", "--max-new-tokens", "3", "--engine", "off"]) == 0
