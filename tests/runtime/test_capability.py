"""The engine's description of a model: filled from its config and modules, compared field by field."""

from __future__ import annotations

import pytest
from benchmarks.families import tiny_family

from ptq161.models.adapters import get_adapter
from ptq161.runtime.capability import ENGINE, describe, engine_mismatches


def _describe(family: str):
    model = tiny_family(family)
    return describe(model, get_adapter(model))


def test_llama_is_the_engines_computation():
    comp = _describe("llama")
    assert (comp.layout, comp.norm, comp.layer_norms, comp.rotary, comp.activation) == (
        ENGINE.layout, ENGINE.norm, ENGINE.layer_norms, ENGINE.rotary, ENGINE.activation,
    )  # fmt: skip
    assert comp.attention_scale == 1.0 and comp.embed_scale == 1.0 and not comp.multipliers
    assert engine_mismatches(comp, 2048) == []


@pytest.mark.parametrize(
    "family,field,value",
    [
        ("granite", "embed_scale", 6.0),  # embedding_multiplier, measured through the forward
        ("granite", "attention_scale", 0.4),  # attention_multiplier 0.1 x sqrt(head_dim 16)
        ("gemma2", "norm", "rms+1"),  # (1 + w) x / rms(x), probed numerically
        ("gemma3", "rotary", "per layer type"),
        ("olmo2", "qk_norm", "other"),  # over the whole projection
        ("olmo2", "layer_norms", ("post_attention_layernorm", "post_feedforward_layernorm")),
        ("smollm3", "rotary", "NoPE layers"),
        ("gpt-neox", "norm", "layer"),
        ("phi3", "layout", "other"),
    ],
)
def test_what_differs_is_found_from_config_and_modules(family, field, value):
    comp = _describe(family)
    assert getattr(comp, field) == value
    assert engine_mismatches(comp, 2048)


def test_qwen3s_per_head_qk_norm_is_served():
    comp = _describe("qwen3")
    assert comp.qk_norm == "per-head rms" and engine_mismatches(comp, 2048) == []


def test_a_sliding_window_matters_only_beyond_it():
    comp = _describe("mistral-sliding")
    assert comp.sliding_window == 16
    assert engine_mismatches(comp, 16) == []
    assert engine_mismatches(comp, 17) == ["sliding window of 16 tokens (engine: full attention over 17)"]


def test_an_untested_model_type_is_refused_even_when_every_field_matches():
    comp = _describe("llama")
    other = type(comp)(**{**comp.to_dict(), "model_type": "newfamily"})
    assert engine_mismatches(other, 64) == ["model type newfamily (engine tested on llama, qwen2, qwen3, mistral)"]
