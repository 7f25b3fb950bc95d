"""End to end on the real SmolLM2-135M: quantize -> packed directory -> load -> evaluate / generate."""

import pytest
import torch

import ptq161
from ptq161 import CalibConfig, evaluate_perplexity, quantize
from ptq161.config import PRESETS
from ptq161.methods.ptq161 import PTQ161Config
from ptq161.nn import PackedPTQ161Linear
from ptq161.pipeline.output_dir import file_bits_per_weight, read_meta
from ptq161.runtime import greedy_generate


def _quantize_smollm2(preset: str, out, text_file=None, data_dir=None):
    p = PRESETS[preset]
    calib = CalibConfig(dataset=f"text:{text_file}" if text_file else None, nsamples=p.nsamples, seqlen=p.seqlen)
    return quantize(
        "smollm2-135m",
        method_config=PTQ161Config(**p.method_defaults()),
        calib=calib,
        output=out,
        data_dir=data_dir,
        progress=False,
    )


@pytest.mark.realmodel
def test_real_model_smoke_quantize_packs_loads_and_generates(text_file, tmp_path):
    """The default run's real-model end-to-end test (smoke budget: ~1 minute on 2 cores)."""
    out = tmp_path / "smol"
    res = _quantize_smollm2("smoke", out, text_file=text_file)
    meta = read_meta(out)
    assert meta["weights_format"] == "packed" and len(meta["bits"]["layers"]) == 30 * 7
    assert 1.69 < meta["bits"]["stored_bits_per_weight"] < 1.71
    assert file_bits_per_weight(out, meta["bits"]["layers"]) < 1.75
    model, tok = ptq161.load(out)
    assert isinstance(model.model.layers[29].mlp.down_proj, PackedPTQ161Linear)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, res.model(ids).logits)  # save -> load is exact
        engine = greedy_generate(model, ids, 8, engine="on")[0]
        forward = greedy_generate(model, ids, 8, engine="off")[0]
    assert engine == forward
    r = evaluate_perplexity(model, tok, [f"text:{text_file}"], seqlen=256, max_windows=2, progress=False)[0]
    assert 1 < r.ppl < 49152  # finite, better than uniform over the vocabulary


@pytest.mark.slow
@pytest.mark.realmodel
def test_real_model_demo_preset_known_answer(shared_data, tmp_path):
    """`make demo`'s run: WikiText-2 perplexity (first 4 windows) 358.03 at 1.699 stored bits (2 threads; 885.37
    before the demo preset chose signs and codes with GPTQ error feedback)."""
    res = _quantize_smollm2("demo", tmp_path / "demo", data_dir=shared_data)
    r = evaluate_perplexity(res.model, res.tokenizer, ["wikitext2"], max_windows=4, data_dir=shared_data)[0]
    assert res.meta["bits"]["stored_bits_per_weight"] == pytest.approx(1.699, abs=5e-4)
    assert r.ppl == pytest.approx(358.03, rel=0.02)  # thread count moves it slightly (summation order)
