"""An architecture outside the explicit adapters (GPT-NeoX, Phi): what ``quantize`` accepts, every command accepts."""

from __future__ import annotations

import math

import pytest
import torch
from tests.helpers import save_model_dir
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PhiConfig, PhiForCausalLM

from ptq161.cli import main
from ptq161.models.adapters import get_adapter
from ptq161.models.loading import load_model

SMALL = dict(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


def _tiny(arch: str):
    torch.manual_seed(0)
    if arch == "neox":  # fused query_key_value, partial rotary, the head stored as embed_out
        return GPTNeoXForCausalLM(GPTNeoXConfig(**SMALL, architectures=["GPTNeoXForCausalLM"])).eval()
    return PhiForCausalLM(PhiConfig(**SMALL, architectures=["PhiForCausalLM"])).eval()


def _ppl(capsys, *args: str) -> float:
    capsys.readouterr()
    assert main(["ppl", *args, "--seqlen", "64", "--max-windows", "4"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| text:"))
    return float(row.split("|")[2])


@pytest.mark.parametrize("arch", ["neox", "phi"])
def test_a_generically_discovered_model_works_in_every_command(arch, text_file, tmp_path, capsys):
    src = save_model_dir(_tiny(arch), tmp_path / arch)
    adapter = get_adapter(load_model(str(src))[0])
    assert adapter.name == "discovered" and adapter.lm_head == "lm_head" and adapter.final_norm.endswith("norm")
    text = ["--datasets", f"text:{text_file}"]
    fp = _ppl(capsys, str(src), *text)
    assert math.isclose(_ppl(capsys, str(src), *text, "--max-memory", "1KB"), fp, rel_tol=1e-6)  # onloaded: same
    out = tmp_path / "q"
    assert (
        main(["quantize", str(src), "--recipe", "smoke", "--calib-dataset", f"text:{text_file}", "--output", str(out)])
        == 0
    )
    q = _ppl(capsys, str(out), *text)
    assert math.isfinite(q) and math.isclose(_ppl(capsys, str(out), *text, "--max-memory", "1KB"), q, rel_tol=1e-6)
    assert main(["info", str(out)]) == 0
    assert main(["generate", str(out), "--prompt", "ab", "--max-new-tokens", "3"]) == 0
    assert "the fused engine does not apply: not the LLaMA layout" in capsys.readouterr().err
    assert main(["bench", str(out), "--prompt-tokens", "8", "--new-tokens", "4"]) == 0
