import pytest
import torch
from benchmarks.families import tiny_family
from tests.helpers import tiny_llama

from ptq161.calibration.capture import capture_block_inputs, run_block
from ptq161.errors import UnsupportedModelError
from ptq161.models import get_adapter


def test_replaying_captured_call_reproduces_the_model_exactly():
    model = tiny_llama(num_hidden_layers=3)
    ad = get_adapter(model)
    ids = torch.randint(0, 260, (3, 24), generator=torch.Generator().manual_seed(0))
    x, calls = capture_block_inputs(model, ad, ids)
    assert x.shape == (3, 24, 64) and len(calls) == 3
    assert "position_embeddings" in calls[0].kwargs and "past_key_values" not in calls[0].kwargs
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True, use_cache=False).hidden_states
        assert torch.equal(x, hs[0])
        for i, layer in enumerate(ad.decoder_layers(model)[:-1]):  # the last hidden state is normed
            x = run_block(layer, x, calls[i])
            assert torch.equal(x, hs[i + 1])


def test_replay_is_causal():
    model = tiny_llama()
    ad = get_adapter(model)
    ids = torch.randint(0, 260, (1, 32), generator=torch.Generator().manual_seed(1))
    x, calls = capture_block_inputs(model, ad, ids)
    call = calls[0]
    block = ad.decoder_layers(model)[0]
    with torch.no_grad():
        y = run_block(block, x, call)
        x2 = x.clone()
        x2[:, 20:] += torch.randn_like(x2[:, 20:])
        y2 = run_block(block, x2, call)
    assert torch.equal(y[:, :20], y2[:, :20])
    assert not torch.allclose(y[:, 20:], y2[:, 20:])


@pytest.mark.parametrize("family,differs", [("gemma3", True), ("qwen2-sliding", True), ("smollm3", False)])
def test_each_layer_gets_its_own_inputs(family, differs):
    """Local and global layers (own masks, own rotary bases) and NoPE layers: replaying every layer with
    its recorded call gives the model's hidden states; replaying layer 0's call everywhere does not where
    the layers' inputs differ (SmolLM3's NoPE layers decide inside the attention: the same inputs)."""
    model = tiny_family(family)
    ad = get_adapter(model)
    ids = torch.randint(0, 260, (2, 48), generator=torch.Generator().manual_seed(0))
    x, calls = capture_block_inputs(model, ad, ids)
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True, use_cache=False).hidden_states
        first, mine = x, x
        for i, layer in enumerate(ad.decoder_layers(model)[:-1]):
            mine = run_block(layer, mine, calls[i])
            first = run_block(layer, first, calls[0])
            torch.testing.assert_close(mine, hs[i + 1], rtol=1e-5, atol=1e-5)
    assert torch.allclose(first, mine, rtol=1e-3, atol=1e-3) != differs  # the old replay was wrong where they differ


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, h, extra):
        return self.lin(h) + extra[..., None]


class _TokenDependent(torch.nn.Module):
    """A decoder stack whose layers get an extra input computed from the tokens (as per-layer embeddings)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.layers = torch.nn.ModuleList([_Layer() for _ in range(2)])

    def forward(self, input_ids, use_cache=False):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(h, extra=input_ids.float())
        return h


def test_layer_inputs_that_depend_on_the_tokens_are_refused():
    from ptq161.calibration.capture import record_layer_calls
    from ptq161.models.adapters import Adapter

    model = _TokenDependent()
    ad = Adapter(name="t", architectures=("TokenDependent",), layers="layers", embed="embed")
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(UnsupportedModelError, match="depend on the tokens"):
        record_layer_calls(model, ad, ids)
    assert all(isinstance(m, _Layer) for m in model.layers)  # the layers are back
