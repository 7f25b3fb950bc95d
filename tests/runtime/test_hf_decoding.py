"""``model.generate(..., custom_generate=ptq161.engine_decoding)``: transformers' generate on the fused engine."""

from __future__ import annotations

import copy

import torch
from tests.helpers import quantize_tiny, save_model_dir, tiny_llama
from transformers import AutoModelForCausalLM

import ptq161
from ptq161.api import load
from ptq161.runtime import engine as engine_module
from ptq161.runtime.hf_decoding import EngineGenerate


def test_generate_through_the_engine_equals_transformers_loop(tmp_path, text_file, monkeypatch):
    quantize_tiny(save_model_dir(tiny_llama(), tmp_path / "src"), text_file, tmp_path / "q")
    model, _ = load(str(tmp_path / "q"), verify=False)
    ids = torch.randint(3, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    kw = dict(max_new_tokens=20, do_sample=False, pad_token_id=0)
    want = type(model).generate(model, ids, **kw)  # transformers' own loop on the model's forward
    got = model.generate(ids, custom_generate=ptq161.engine_decoding, **kw)
    assert torch.equal(got, want) and got.shape == (1, 32)
    steps = []  # the loaded model's plain generate decodes on the engine, with no argument
    monkeypatch.setattr(engine_module.DecodeEngine, "step", _counting(engine_module.DecodeEngine.step, steps))
    # 19 decode steps, and the prompt's last token (12 tokens <= STEP_PREFILL: prefilled by engine steps)
    assert torch.equal(model.generate(ids, **kw), want) and len(steps) == 20
    engine = model.generate.decoding.engine  # kept for the next call (its cache is overwritten by the prefill)
    assert torch.equal(model.generate(ids, **kw), want) and model.generate.decoding.engine is engine
    twin = copy.deepcopy(model)  # a copy leaves the engine behind and builds its own on its model
    assert twin.generate.decoding.engine is None and twin.generate.model is twin
    assert torch.equal(twin.generate(ids, **kw), want) and twin.generate.decoding.engine.model is twin
    steps.clear()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "q")  # the same through transformers' auto class
    assert isinstance(auto.generate, EngineGenerate) and torch.equal(auto.generate(ids, **kw), want)
    assert len(steps) == 20
    beams = dict(max_new_tokens=6, num_beams=2, do_sample=False, pad_token_id=0)  # not the engine's mode
    assert torch.equal(model.generate(ids, **beams), type(model).generate(model, ids, **beams))
    assert len(steps) == 20
    torch.manual_seed(3)
    a = model.generate(ids, custom_generate=ptq161.engine_decoding, do_sample=True, top_k=20, max_new_tokens=10,
                       pad_token_id=0)  # fmt: skip
    torch.manual_seed(3)
    b = model.generate(ids, custom_generate=ptq161.engine_decoding, do_sample=True, top_k=20, max_new_tokens=10,
                       pad_token_id=0)  # fmt: skip
    assert torch.equal(a, b) and a.shape == (1, 22)
    two = torch.cat([ids, ids])  # batch 2: transformers' own loop, the same result
    assert torch.equal(model.generate(two, custom_generate=ptq161.engine_decoding, **kw), model.generate(two, **kw))


def _counting(fn, calls: list):
    def step(self, *args, **kwargs):
        calls.append(1)
        return fn(self, *args, **kwargs)

    return step


def test_min_length_processors_applied_as_what_they_compute_equal_transformers():
    """The engine loop's shortcut for transformers' min-length processors (no vocabulary-wide mask at each
    token) gives transformers' own scores exactly, before, at and after the length where they stop acting,
    beside processors it hands to transformers (a change of their attributes fails here)."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    from ptq161.runtime.hf_decoding import apply_processors

    eos = torch.tensor([2, 7, 300])  # 300: beyond the vocabulary, matches nothing
    processors = LogitsProcessorList(
        [
            TemperatureLogitsWarper(0.7),
            MinNewTokensLengthLogitsProcessor(prompt_length_to_skip=5, min_new_tokens=3, eos_token_id=eos),
            MinLengthLogitsProcessor(min_length=9, eos_token_id=torch.tensor(4)),
            TopKLogitsWarper(top_k=50),
        ]
    )
    g = torch.Generator().manual_seed(0)
    for length in range(5, 12):
        ids = torch.randint(0, 256, (1, length), generator=g)
        scores = torch.randn(1, 256, generator=g)
        want = processors(ids, scores.clone())
        got = apply_processors(processors, ids, scores.clone())
        assert torch.equal(got, want), length
        got = apply_processors(processors[:3], ids, scores)  # without top-k: only the min-length ones give -inf
        assert bool(torch.isinf(got[0, 7])) == (length < 8) and bool(torch.isinf(got[0, 4])) == (length < 9)
        assert int(torch.isinf(got).sum()) == 2 * (length < 8) + (length < 9)
