import pytest
import torch

from ptq161.errors import PTQ161Error
from ptq161.nn.int4 import (
    CLIP_RATIOS,
    Int4Embedding,
    Int4Linear,
    _quantize_groups,
    dequantize_int4_groups,
    int4_group_size,
    quantize_int4_groups,
)


def _w(m, n, seed=0):
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


def test_codes_pack_two_per_byte_and_dequantize_exactly():
    w = _w(37, 128)
    codes, scale, offset = quantize_int4_groups(w, 64)
    assert codes.shape == (37, 64) and scale.shape == offset.shape == (37, 2)
    assert codes.dtype == torch.uint8 and scale.dtype == offset.dtype == torch.float16
    q = torch.stack((codes & 15, codes >> 4), dim=-1).reshape(37, 128).float()  # low nibble = even column
    want = (q.reshape(37, 2, 64) * scale.float()[..., None] + offset.float()[..., None]).reshape(37, 128)
    assert torch.equal(dequantize_int4_groups(codes, scale, offset), want)


def test_error_is_at_most_that_of_the_plain_min_max_grid_and_within_half_a_step():
    w = _w(50, 192, seed=1)
    codes, scale, offset = quantize_int4_groups(w, 64)
    err = (dequantize_int4_groups(codes, scale, offset) - w).square().reshape(50, 3, 64).sum(-1)
    q, s, o = _quantize_groups(w.reshape(50, 3, 64), CLIP_RATIOS[0])
    plain = (q * s.float()[..., None] + o.float()[..., None] - w.reshape(50, 3, 64)).square().sum(-1)
    assert torch.all(err <= plain + 1e-6)  # the clip search keeps the best candidate per group
    assert err.sum() < plain.sum()  # and on Gaussian rows it finds better ones
    q, s, o = _quantize_groups(w.reshape(50, 3, 64), 1.0)  # the full range: every weight within half a step
    full = q * s.float()[..., None] + o.float()[..., None]
    assert torch.all((full - w.reshape(50, 3, 64)).abs() <= s.float()[..., None] / 2 + 1e-5)


def test_quantized_in_row_tiles_equals_all_at_once():
    w = _w(41, 64, seed=2)
    a = quantize_int4_groups(w, 32, rows=7)
    b = quantize_int4_groups(w, 32, rows=1000)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_group_size_is_the_largest_that_divides_and_bad_sizes_are_refused():
    assert int4_group_size(576) == 64 and int4_group_size(896) == 64 and int4_group_size(96) == 32
    with pytest.raises(PTQ161Error, match="multiple of 32"):
        int4_group_size(100)
    with pytest.raises(PTQ161Error, match="do not divide"):
        quantize_int4_groups(_w(3, 100), 64)


@pytest.mark.parametrize("n", [64, 96, 576])
def test_linear_kernel_and_row_tiles_match_the_dequantized_weight(n):
    lin = Int4Linear.from_weight(_w(300, n, seed=3))
    ref = lin.dequantize()
    with torch.no_grad():
        x = torch.randn(2, 3, n, generator=torch.Generator().manual_seed(4))  # decode-sized: the numba kernel
        assert torch.allclose(lin(x), x @ ref.T, rtol=0, atol=1e-4)
        x2 = torch.randn(1, 20, n, generator=torch.Generator().manual_seed(5))  # prefill-sized: row tiles + BLAS
        assert torch.allclose(lin(x2), x2 @ ref.T, rtol=0, atol=1e-4)


def test_embedding_returns_the_dequantized_rows_in_the_model_dtype():
    w = _w(40, 64, seed=6)
    emb = Int4Embedding.from_weight(w)
    ids = torch.tensor([[0, 7, 39, 7]])
    assert torch.equal(emb(ids)[0], emb.dequantize()[ids[0]])
    assert (emb.dequantize() - w).abs().max() < 0.5
    half = Int4Embedding.from_weight(w.half())
    assert half(ids).dtype == torch.float16


def test_a_dtype_cast_keeps_the_stored_fp16_factors_and_damaged_factors_are_refused():
    lin = Int4Linear.from_weight(_w(16, 64, seed=7))
    before = lin.scale.clone()
    lin.to(torch.bfloat16)
    assert lin.scale.dtype == torch.float16 and torch.equal(lin.scale, before)
    lin.validate("ok")
    lin.offset[3, 0] = float("nan")
    with pytest.raises(PTQ161Error, match="int4 module 'lm_head'"):
        lin.validate("lm_head")
