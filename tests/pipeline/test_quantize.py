"""End to end on the real SmolLM2-135M: quantize -> packed directory -> load -> evaluate / generate."""

import pytest
import torch
from benchmarks.known_answers import demo_check, known_answer, smoke_check

import ptq161
from ptq161 import evaluate_perplexity
from ptq161.nn import PackedPTQ161Linear
from ptq161.pipeline.output_dir import file_bits_per_weight, read_meta
from ptq161.runtime import greedy_generate


def _quantize_smollm2(recipe: str, out, text_file=None, data_dir=None):
    calib = {"calib_dataset": f"text:{text_file}"} if text_file else {}
    return ptq161.quantize("smollm2-135m", recipe, output=out, data_dir=data_dir, progress=False, **calib)


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


def _assert_known_answer(check: str, result: dict) -> None:
    """``result`` (a check of benchmarks/known_answers.py) within the band measured for its code path."""
    answer = known_answer(check, result["code_paths"])
    assert answer is not None, f"no known answer of {check} for {result['code_paths']}: run benchmarks.known_answers"
    assert result["ppl"] == pytest.approx(answer["ppl"], rel=answer["rel_band"])


@pytest.mark.realmodel
def test_real_model_smoke_recipe_known_answer(shared_data):
    """The default run's real-model quality check: the smoke recipe's WikiText-2 perplexity on fixed windows
    equals the known answer of its code path within the band measured across code paths
    (benchmarks/results/known_answers.md); about 20 s on 2 cores once the model is cached."""
    _assert_known_answer("smoke", smoke_check(shared_data))


@pytest.mark.slow
@pytest.mark.realmodel
def test_real_model_demo_recipe_known_answer(shared_data):
    """`make demo`'s run (the demo recipe) gives the known answer of its code path."""
    _assert_known_answer("demo", demo_check(shared_data))
