import torch

from ptq161.methods.ptq161_math import binary_init
from ptq161.primitives.quant import (
    binarize,
    binary_dequantize,
    residual_binarize,
    rtn_asym_params,
    rtn_dequantize,
    rtn_fake,
    rtn_grouped,
    rtn_quantize,
    rtn_stored_bits,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_rtn_error_bounded_by_half_step_and_decreases_with_bits():
    w = randn(16, 40)
    errs = []
    for bits in (2, 3, 4, 8):
        scale, zero = rtn_asym_params(w, bits)
        codes = rtn_quantize(w, scale, zero, bits)
        assert int(codes.max()) <= 2**bits - 1
        deq = rtn_dequantize(codes, scale, zero)
        assert torch.all((deq - w).abs() <= scale.float()[:, None] / 2 + 1e-5)
        errs.append((deq - w).pow(2).mean().item())
    assert errs == sorted(errs, reverse=True)


def test_grouped_rtn_is_per_row_rtn_of_each_group():
    w = randn(5, 40)
    got = rtn_grouped(w, 3, 16)
    for j in range(0, 40, 16):
        assert torch.equal(got[:, j : j + 16], rtn_fake(w[:, j : j + 16], 3))
    assert torch.equal(rtn_grouped(w, 3, 0), rtn_fake(w, 3))
    assert rtn_stored_bits(5, 40, 3, 16) == 5 * 40 * 3 + 5 * 3 * (16 + 3)


def test_residual_binarization_beats_xnor():
    w = randn(48, 256) * 0.02
    xnor = binarize(w)
    res2 = residual_binarize(w, None, 2)
    assert ((res2 - w) ** 2).sum() < 0.7 * ((xnor - w) ** 2).sum()


def test_binary_dequantize_matches_formula_and_folding():
    w = randn(4, 10)
    sign, mu, s = binary_init(w)
    r1, r2 = torch.rand(4) + 0.5, torch.rand(10) + 0.5
    ref = r1[:, None] * r2[None, :] * (s[:, None] * sign + mu[:, None])
    got = binary_dequantize(sign > 0, r1 * s, r1 * mu, r2)
    assert torch.allclose(got, ref, atol=1e-6)
