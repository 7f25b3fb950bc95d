"""Qwen2 layout (q/k/v with bias, untied lm_head) through every method, the packed format and the engine."""

from pathlib import Path

import pytest
import torch
from tests.helpers import quantize_with, save_model_dir, tiny_qwen2
from transformers import AutoModelForCausalLM

import ptq161
from ptq161 import CalibConfig
from ptq161.methods import METHODS
from ptq161.nn import Int8Linear, PackedPTQ161Linear
from ptq161.pipeline.output_dir import read_parts
from ptq161.runtime import greedy_generate


@pytest.fixture
def qwen2_dir(tmp_path: Path) -> Path:
    return save_model_dir(tiny_qwen2(), tmp_path / "qwen2")


def _quantize(model_dir: Path, method: str, text_file: Path, out: Path, **kw):
    cfg = METHODS[method].config_class()
    if method == "ptq161":
        cfg = type(cfg)(epochs=1)
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=64)
    return quantize_with(str(model_dir), method, method_config=cfg, calib=calib, output=out, progress=False, **kw)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_keeps_qwen2_biases_and_saves_loads_exactly(qwen2_dir, text_file, tmp_path, method):
    fp = AutoModelForCausalLM.from_pretrained(qwen2_dir)
    out = tmp_path / method
    res = _quantize(qwen2_dir, method, text_file, out, head="fp32")  # the untied fp head is checked below
    loaded, _ = ptq161.load(out)
    for name in ("q_proj", "k_proj", "v_proj"):
        want = fp.model.layers[1].self_attn.get_submodule(name).bias
        assert torch.equal(loaded.model.layers[1].self_attn.get_submodule(name).bias, want)
        assert want.abs().max() > 0.1  # a non-zero bias: dropping it would show
    assert not torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)  # untied head kept
    assert len(read_parts(out)) == 2 * 7
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, res.model(ids).logits)


def test_packed_qwen2_with_int8_head_decodes_in_the_engine(qwen2_dir, text_file, tmp_path):
    out = tmp_path / "int8"
    res = _quantize(qwen2_dir, "ptq161", text_file, out, head="int8")
    model, _ = ptq161.load(out)
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.model.layers[0].self_attn.q_proj, PackedPTQ161Linear)
    head = model.lm_head.dequantize()
    assert (head - AutoModelForCausalLM.from_pretrained(qwen2_dir).lm_head.weight).abs().max() < 0.01
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, res.model(ids).logits)
        engine = greedy_generate(model, ids, 8, engine="on")[0]
    assert engine == greedy_generate(model, ids, 8, engine="off")[0]


@pytest.mark.parametrize("train_signs", [False, True])
def test_end_to_end_stage_trains_a_qwen2_with_biases(qwen2_dir, text_file, tmp_path, train_signs):
    from ptq161.pipeline.e2e import E2EConfig

    out = tmp_path / f"e2e-{train_signs}"
    e2e = E2EConfig(steps=3, heldout=1, topk=8, train_signs=train_signs)
    res = _quantize(qwen2_dir, "ptq161", text_file, out, e2e=e2e)
    log = res.meta["e2e_log"]
    assert log["heldout_kl_after"] == log["heldout_kl_after"]  # finite, not NaN
    loaded, _ = ptq161.load(out)
    assert loaded.model.layers[0].self_attn.k_proj.bias.abs().max() > 0.1
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, res.model(ids).logits)
