import pytest
import torch
from tests.helpers import hessian_layer, out_err

from ptq161.methods.billm import BiLLM, BiLLMConfig, billm_layer
from ptq161.primitives.quant import binarize


@pytest.fixture
def layer():
    return hessian_layer()


@pytest.mark.parametrize("search", ["saliency", "weight"])
def test_billm_beats_xnor(layer, search):
    w, x, h = layer
    xnor = binarize(w)
    q, cols, blocks = billm_layer(w, h, BiLLMConfig(search=search))
    assert blocks == 2 and 2 <= cols <= 98
    assert ((q - w) ** 2).sum() < ((xnor - w) ** 2).sum()
    assert out_err(x, w, q) < out_err(x, w, xnor)


def test_billm_compensation_between_blocks_lowers_output_error(layer):
    w, x, h = layer
    q_comp = billm_layer(w, h, BiLLMConfig())[0]
    q_none = billm_layer(w, h, BiLLMConfig(compensation="none"))[0]
    # the first block is quantized identically; only the later blocks see the compensated weights
    assert torch.equal(q_comp[:, :128], q_none[:, :128])
    assert out_err(x, w, q_comp) < out_err(x, w, q_none)


def test_bit_count_matches_hand_computed_value():
    _, stored = BiLLM(BiLLMConfig()).bits(6, 256, {"salient_cols": 10, "blocks": 2})
    assert stored == 1536 + 6 * 10 + 6 * 246 + 256 + 2 * 6 * 128
