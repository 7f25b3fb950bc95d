import torch
from tests.helpers import tiny_llama

from ptq161.calibration.capture import capture_block_inputs, run_block
from ptq161.models import get_adapter


def test_replaying_captured_call_reproduces_the_model_exactly():
    model = tiny_llama(num_hidden_layers=3)
    ad = get_adapter(model)
    ids = torch.randint(0, 260, (3, 24), generator=torch.Generator().manual_seed(0))
    x, call = capture_block_inputs(model, ad, ids)
    assert x.shape == (3, 24, 64)
    assert "position_embeddings" in call.kwargs and "past_key_values" not in call.kwargs
    with torch.no_grad():
        hs = model(ids, output_hidden_states=True, use_cache=False).hidden_states
        assert torch.equal(x, hs[0])
        for i, layer in enumerate(ad.decoder_layers(model)[:-1]):  # the last hidden state is normed
            x = run_block(layer, x, call)
            assert torch.equal(x, hs[i + 1])


def test_replay_is_causal():
    model = tiny_llama()
    ad = get_adapter(model)
    ids = torch.randint(0, 260, (1, 32), generator=torch.Generator().manual_seed(1))
    x, call = capture_block_inputs(model, ad, ids)
    block = ad.decoder_layers(model)[0]
    with torch.no_grad():
        y = run_block(block, x, call)
        x2 = x.clone()
        x2[:, 20:] += torch.randn_like(x2[:, 20:])
        y2 = run_block(block, x2, call)
    assert torch.equal(y[:, :20], y2[:, :20])
    assert not torch.allclose(y[:, 20:], y2[:, 20:])
