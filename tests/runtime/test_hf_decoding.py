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
    assert torch.equal(model.generate(ids, **kw), want) and len(steps) == 19
    engine = model.generate.decoding.engine  # kept for the next call (its cache is overwritten by the prefill)
    assert torch.equal(model.generate(ids, **kw), want) and model.generate.decoding.engine is engine
    twin = copy.deepcopy(model)  # a copy leaves the engine behind and builds its own on its model
    assert twin.generate.decoding.engine is None and twin.generate.model is twin
    assert torch.equal(twin.generate(ids, **kw), want) and twin.generate.decoding.engine.model is twin
    steps.clear()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "q")  # the same through transformers' auto class
    assert isinstance(auto.generate, EngineGenerate) and torch.equal(auto.generate(ids, **kw), want)
    assert len(steps) == 19
    beams = dict(max_new_tokens=6, num_beams=2, do_sample=False, pad_token_id=0)  # not the engine's mode
    assert torch.equal(model.generate(ids, **beams), type(model).generate(model, ids, **beams))
    assert len(steps) == 19
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
