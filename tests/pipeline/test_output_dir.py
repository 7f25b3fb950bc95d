import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.helpers import quantize_tiny
from transformers import AutoModelForCausalLM

import ptq161
from ptq161.errors import PTQ161Error
from ptq161.models.integrity import IntegrityError
from ptq161.nn import PackedPTQ161Linear


@pytest.fixture
def packed_dir(tiny_model_dir, text_file, tmp_path) -> tuple[Path, torch.nn.Module]:
    out = tmp_path / "packed"
    res = quantize_tiny(tiny_model_dir, text_file, out)
    return out, res.model


def test_save_load_same_outputs_through_ptq161_and_transformers(packed_dir):
    out, quantized = packed_dir
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "ptq161" and cfg["format_version"] == 1 and len(cfg["layers"]) == 14
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    model, _ = ptq161.load(out)
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(hf.model.layers[0].mlp.down_proj, PackedPTQ161Linear)
    with torch.no_grad():
        ref = quantized(ids).logits
        assert torch.equal(model(ids).logits, ref)
        assert torch.equal(hf(ids).logits, ref)
        short = model(ids[:, :4]).logits  # decode-sized call: table-lookup kernel
    assert torch.allclose(short, ref[:, :4], atol=1e-4)


def test_corrupted_or_mismatched_artifacts_fail_clearly(packed_dir, tmp_path):
    out, _ = packed_dir
    trunc = tmp_path / "trunc"
    shutil.copytree(out, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match=r"'model\.safetensors' has"):  # the sha256 manifest first
        ptq161.load(trunc)
    with pytest.raises(PTQ161Error, match="cannot load"):  # and without it, the loader
        ptq161.load(trunc, verify=False)

    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(IntegrityError, match=r"config\.json"):
        ptq161.load(wrong)
    with pytest.raises(PTQ161Error, match="format version 99"):
        ptq161.load(wrong, verify=False)

    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    tensors = load_file(str(missing / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.sign"]
    save_file(tensors, str(missing / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        ptq161.load(missing)
    with pytest.raises(PTQ161Error, match="missing 1 tensors"):
        ptq161.load(missing, verify=False)


def test_fresh_process_loads_packed_dir(packed_dir):
    """The packing helpers are first imported inside transformers' empty-weights context here."""
    out, _ = packed_dir
    code = f"import ptq161, torch; m, _ = ptq161.load({str(out)!r}); print(m(torch.tensor([[1, 2, 3]])).logits.shape)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "torch.Size([1, 3, 260])" in p.stdout
