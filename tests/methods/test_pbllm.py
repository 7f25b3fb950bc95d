import pytest
import torch
from tests.helpers import hessian_layer, out_err

from ptq161.methods.gptq import gptq_layer
from ptq161.methods.gptq_math import gptq_quantize, prepare_hessian
from ptq161.methods.pbllm import PBLLM, PBLLMConfig, pbllm_layer
from ptq161.primitives.quant import apply_binary, binarize, binarize_rows


@pytest.fixture
def layer():
    return hessian_layer()


def test_pbllm_with_all_salient_equals_8bit_gptq(layer):
    w, _, h = layer
    q_pb, n_sal = pbllm_layer(w, h, PBLLMConfig(salient_ratio=1.0))
    assert n_sal == w.numel()
    assert torch.equal(q_pb, gptq_layer(w, h, 8, 0, 0.01, 128))


def test_pbllm_with_no_salient_equals_xnor_with_compensation(layer):
    w, x, h = layer
    q_pb, n_sal = pbllm_layer(w, h, PBLLMConfig(salient_ratio=0.0))
    wp, hinv = prepare_hessian(w, h, 0.01)
    mu, alpha = binarize_rows(wp)
    ref = gptq_quantize(wp, hinv, lambda col, _i: apply_binary(col[:, None], mu, alpha)[:, 0], 128)
    assert n_sal == 0 and torch.equal(q_pb, ref)
    assert out_err(x, w, q_pb) < out_err(x, w, binarize(w))


def test_bit_count_matches_hand_computed_value():
    paper, stored = PBLLM(PBLLMConfig()).bits(6, 256, {"salient": 154})
    assert stored == (1536 - 154) + 8 * 154 + 1536 + 6 * 24 + 6 * 32
    assert paper == pytest.approx((1536 - 154 + 8 * 154) / 1536 + 1)
