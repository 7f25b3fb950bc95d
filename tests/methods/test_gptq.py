import pytest
from tests.helpers import hessian_layer, out_err

from ptq161.methods.gptq import GPTQ, GPTQConfig, gptq_layer
from ptq161.primitives.quant import rtn_grouped


@pytest.fixture
def layer():
    return hessian_layer()


@pytest.mark.parametrize("bits,group", [(2, 0), (3, 0), (3, 128), (4, 0)])
def test_gptq_has_lower_output_error_than_rtn(layer, bits, group):
    w, x, h = layer
    q_gptq = gptq_layer(w, h, bits, group, 0.01, 128)
    q_rtn = rtn_grouped(w, bits, group)
    assert out_err(x, w, q_gptq) < 0.9 * out_err(x, w, q_rtn)


def test_bit_count_matches_hand_computed_value():
    assert GPTQ(GPTQConfig(bits=2, group_size=128)).bits(6, 256, {}) == (2.0, 6 * 256 * 2 + 6 * 2 * (16 + 2))
