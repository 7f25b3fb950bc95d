"""Every family people run, as a tiny random model: the same perplexity in memory, block-onloaded and in
plain transformers; quantized, the same again; the fused engine decodes its forward's tokens or refuses."""

from __future__ import annotations

import pytest
from benchmarks.families import (
    FAMILIES,
    engine_check,
    eval_tokens,
    max_rel_spread,
    three_perplexities,
    tiny_family,
    try_method,
)
from tests.helpers import save_model_dir

from ptq161.methods import METHODS

TOL = 1e-4  # relative, the bar


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: str(save_model_dir(tiny_family(f), root / f)) for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fp_perplexity_is_the_same_in_memory_onloaded_and_in_transformers(family, family_dirs):
    ppl = three_perplexities(family_dirs[family], eval_tokens())
    assert set(ppl) == {"in_memory", "onloaded", "transformers"}
    assert max_rel_spread(ppl) < TOL, ppl


@pytest.mark.parametrize("family", list(FAMILIES))
def test_quantized_model_agrees_across_paths_and_with_the_engine(family, family_dirs, text_file, tmp_path):
    out = tmp_path / "q"
    assert try_method(family_dirs[family], "ptq161", str(out), str(text_file)) == "ok"
    ppl = three_perplexities(str(out), eval_tokens())
    assert max_rel_spread(ppl) < TOL, ppl
    verdict = engine_check(str(out))  # asserts equal tokens when the engine serves the model
    assert verdict == "same tokens" if family in ("llama", "qwen2", "qwen3") else verdict.startswith("refused: ")


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", [m for m in METHODS if m != "ptq161"])
def test_every_method_quantizes_or_refuses_in_one_line(family, method, family_dirs, text_file, tmp_path):
    verdict = try_method(family_dirs[family], method, str(tmp_path / "q"), str(text_file))
    assert verdict == "ok" or (verdict.startswith("refused: ") and "\n" not in verdict)


def test_the_engine_serves_a_sliding_window_model_within_its_window(family_dirs, text_file, tmp_path):
    out = tmp_path / "q"
    assert try_method(family_dirs["mistral-sliding"], "ptq161", str(out), str(text_file)) == "ok"
    assert engine_check(str(out), new_tokens=8, prompt_len=8) == "same tokens"  # 16 positions: the window
    assert engine_check(str(out), new_tokens=8, prompt_len=9).startswith("refused: sliding window of 16 tokens")
