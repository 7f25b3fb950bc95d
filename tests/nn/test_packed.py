import pytest
import torch
from tests.helpers import random_parts

from ptq161.errors import PTQ161Error
from ptq161.methods.ptq161 import PTQ161, PTQ161Config
from ptq161.nn import Int8Embedding, Int8Linear
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
    order = mod.column_order()  # the prefill tiles: columns grouped (salient, then binarized), same bits
    assert sorted(order.tolist()) == list(range(n))
    assert torch.equal(mod.grouped_rows(slice(None)), w[:, order])
    assert torch.equal(mod.grouped_rows(slice(2, m)), w[2:, order])
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


def _damage(mod: PackedPTQ161Linear, how: str) -> None:
    if how == "index_out_of_range":
        mod.sal_idx[0] = mod.in_features + 5
    elif how == "negative_index":
        mod.bin_idx[-1] = -3
    elif how == "unsorted":
        mod.sal_idx[[0, 1]] = mod.sal_idx[[1, 0]].clone()
    elif how == "overlap":  # same count, one binarized column also listed as salient
        mod.sal_idx[0] = mod.bin_idx[0]
        mod.sal_idx.copy_(mod.sal_idx.sort().values)
    elif how == "zero_point":
        mod.zero[2] = 200
    elif how in ("scale", "a", "b", "r2"):
        getattr(mod, how)[1] = float("nan")
    elif how == "inf_bias":
        mod.bias.data[0] = float("inf")


@pytest.mark.parametrize(
    "how, needle",
    [
        ("index_out_of_range", "sal_idx holds 38, outside 0..32"),
        ("negative_index", "bin_idx holds -3"),
        ("unsorted", "sal_idx is not sorted"),
        ("overlap", "overlap"),
        ("zero_point", "a zero point is 200"),
        ("scale", "scale holds NaN"),
        ("a", "a holds NaN"),
        ("b", "b holds NaN"),
        ("r2", "r2 holds NaN"),
        ("inf_bias", "bias holds NaN or infinite"),
    ],
)
def test_validate_refuses_damaged_buffers_before_a_kernel_sees_them(how, needle):
    parts = random_parts(12, 33, 7)
    mod = PackedPTQ161Linear.from_parts(parts, bias=torch.zeros(12))
    mod.validate("layer")  # intact: passes
    _damage(mod, how)
    with pytest.raises(PTQ161Error, match=f"packed layer 'layer': {needle}" if how != "overlap" else needle):
        mod.validate("layer")


@pytest.mark.parametrize("cls", ["linear", "embedding"])
def test_int8_modules_refuse_non_finite_scales(cls):
    w = torch.randn(5, 8)
    mod = (Int8Linear if cls == "linear" else Int8Embedding).from_weight(w)
    mod.validate("head")
    mod.scale[3] = float("inf")
    with pytest.raises(PTQ161Error, match="int8 module 'head': scale holds NaN, infinite"):
        mod.validate("head")


def test_parts_record_round_trips_and_refuses_a_missing_field():
    from ptq161.errors import PTQ161Error
    from ptq161.nn import PTQ161Parts

    d = random_parts(12, 33, 7)
    p = PTQ161Parts.from_dict(d)
    assert p.as_dict().keys() == d.keys() and all(p.as_dict()[k] is d[k] for k in d)
    assert p.n_salient == 7
    a, b = PackedPTQ161Linear.from_parts(p), PackedPTQ161Linear.from_parts(d)
    assert torch.equal(a.dequantize(), b.dequantize())
    with pytest.raises(PTQ161Error, match=r"PTQ1\.61 parts need"):
        PTQ161Parts.from_dict({k: v for k, v in d.items() if k != "r2"})
