"""Directories another tool quantized: a stale marker over dense weights loads as full precision (said in one
line); another tool's packed format is refused in one line before any work, leaving no output behind."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch as st
import torch
from tests.helpers import save_model_dir, tiny_llama

from ptq161.cli import main


def _mark(d, quant: dict) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = quant
    (d / "config.json").write_text(json.dumps(cfg))


def _ppl(capsys, *args: str) -> float:
    capsys.readouterr()
    assert main(["ppl", *args, "--seqlen", "64", "--max-windows", "2"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| text:"))
    return float(row.split("|")[2])


def test_a_gguf_marker_over_dense_weights_loads_as_full_precision(tmp_path, text_file, capsys, caplog):
    plain = save_model_dir(tiny_llama(), tmp_path / "plain")
    marked = save_model_dir(tiny_llama(), tmp_path / "marked")
    _mark(marked, {"quant_method": "gguf"})
    data = ["--datasets", f"text:{text_file}"]
    want = _ppl(capsys, str(plain), *data)
    assert _ppl(capsys, str(marked), *data) == want
    assert math.isclose(_ppl(capsys, str(marked), *data, "--max-memory", "1KB"), want, rel_tol=1e-6)
    assert "names quantization method 'gguf' but every stored weight is dense" in caplog.text
    out = tmp_path / "q"
    assert main(["quantize", str(marked), "--recipe", "smoke", "--calib-dataset", f"text:{text_file}",
                 "--output", str(out)]) == 0  # fmt: skip
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "ptq161"


@pytest.mark.parametrize(
    "method,tensor,dtype",
    [
        ("gptq", "qweight", torch.int32),
        ("awq", "qzeros", torch.int32),
        ("bitsandbytes", "weight", torch.uint8),
        ("compressed-tensors", "weight_packed", torch.int32),
    ],
)
def test_another_tools_packed_format_is_refused_in_one_line(method, tensor, dtype, tmp_path, text_file, capsys):
    d = save_model_dir(tiny_llama(), tmp_path / method)
    sd = st.load_file(str(d / "model.safetensors"))
    sd[f"model.layers.0.self_attn.q_proj.{tensor}"] = torch.zeros(8, 64, dtype=dtype)
    st.save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    _mark(d, {"quant_method": method, "bits": 4})
    out = tmp_path / "q"
    for cmd in (
        ["ppl", str(d), "--datasets", f"text:{text_file}", "--seqlen", "64"],
        ["ppl", str(d), "--datasets", f"text:{text_file}", "--seqlen", "64", "--max-memory", "1KB"],
        ["quantize", str(d), "--recipe", "smoke", "--calib-dataset", f"text:{text_file}", "--output", str(out)],
        ["generate", str(d), "--prompt", "ab", "--max-new-tokens", "2"],
    ):
        capsys.readouterr()
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"quant_method = {method}" in err[0] and "Traceback" not in err[0]
    assert not out.exists()
