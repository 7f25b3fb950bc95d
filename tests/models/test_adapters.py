import pytest
import torch
from tests.helpers import tiny_llama
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ptq161.errors import UnsupportedModelError
from ptq161.models import get_adapter, supported_architectures
from ptq161.models.adapters import discover_adapter

SMALL = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
SMALL |= {"num_attention_heads": 4, "num_key_value_heads": 2}


def test_llama_adapter_finds_seven_linears_with_shared_input_groups():
    model = tiny_llama()
    ad = get_adapter(model)
    assert ad.name == "llama"
    layers = ad.decoder_layers(model)
    assert len(layers) == 2
    lin = ad.block_linears(layers[0])
    assert list(lin) == [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]
    assert all(isinstance(m, nn.Linear) for m in lin.values())
    assert ad.linear_groups[0] == ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@pytest.mark.parametrize("cls,cfg", [(Qwen2ForCausalLM, Qwen2Config), (MistralForCausalLM, MistralConfig)])
def test_llama_layout_families_share_the_adapter(cls, cfg):
    torch.manual_seed(0)
    model = cls(cfg(**SMALL, architectures=[cls.__name__]))
    assert get_adapter(model).name == "llama"


def test_unsupported_model_error_lists_supported():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    assert discover_adapter(model) is None  # GPT-2 uses Conv1D, not nn.Linear
    with pytest.raises(UnsupportedModelError) as e:
        get_adapter(model)
    msg = str(e.value)
    for arch in supported_architectures():
        assert arch in msg


def test_generic_discovery_on_unknown_architecture_name():
    model = tiny_llama(architectures=["SomethingNewForCausalLM"])
    ad = get_adapter(model)
    # an unknown name with the LLaMA layout still matches the LLaMA adapter via class name
    assert ad.name == "llama"
    found = discover_adapter(model)
    assert found is not None and found.layers == "model.layers"
    assert len(found.linear_names) == 7


def test_model_linears_names_every_decoder_linear_by_its_full_path():
    model = tiny_llama()
    linears = get_adapter(model).model_linears(model)
    assert len(linears) == 2 * 7
    assert all(model.get_submodule(name) is lin for name, lin in linears.items())
    assert "model.layers.1.mlp.down_proj" in linears
