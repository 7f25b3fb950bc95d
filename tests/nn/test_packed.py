import pytest
import torch
from tests.helpers import random_parts

from ptq161.methods.ptq161 import PTQ161, PTQ161Config
from ptq161.nn.packed import LUT_MAX_TOKENS, PackedPTQ161Linear


@pytest.mark.parametrize("m,n,n_sal", [(7, 13, 3), (33, 64, 13), (65, 100, 21), (16, 9, 0), (48, 96, 95)])
@pytest.mark.parametrize("tokens", [1, 3, LUT_MAX_TOKENS + 5])
def test_kernel_matches_reference_matmul(m, n, n_sal, tokens):
    parts = random_parts(m, n, n_sal)
    w = PTQ161(PTQ161Config()).dequantize(parts)
    mod = PackedPTQ161Linear.from_parts(parts)
    assert torch.equal(mod.dequantize(), w)  # unpacking reproduces the quantizer's weight bit for bit
    assert torch.equal(mod.dense_rows(slice(None)), w)  # the numba row kernel (prefill path) too
    assert torch.equal(mod.dense_rows(slice(1, m - 1)), w[1 : m - 1])
    x = torch.randn(2, tokens, n, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = mod(x)
    ref = x @ w.T
    assert got.shape == (2, tokens, m)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_packed_storage_is_about_1_6_bits_at_paper_width():
    n = 4096
    n_sal = int(0.2 * n) + 1
    mod = PackedPTQ161Linear.from_parts(random_parts(n, n, n_sal))
    stored_bits = 8 * sum(t.numel() * t.element_size() for t in mod.buffers())
    n_b = n - n_sal
    # signs, codes (whole bytes per row), fp16 scale + uint8 zero + fp16 a, b per row, fp16 r2, int16 indices
    hand = n * 8 * -(-n_b // 8) + n * 8 * -(-n_sal // 2) + n * (16 + 8 + 32) + 16 * n_b + 16 * n
    assert stored_bits == hand
    assert stored_bits / (n * n) <= 1.63
