import pytest
import torch

from ptq161.primitives.bits import pack_bits, pack_nibbles, unpack_bits, unpack_nibbles


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (2, 9), (17, 33), (4, 0)])
def test_bit_pack_roundtrip_is_exact(shape):
    bits = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], (shape[1] + 7) // 8)
    assert torch.equal(unpack_bits(packed, shape[1]), bits)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (5, 8), (17, 33), (4, 0)])
def test_nibble_pack_roundtrip_is_exact(shape):
    codes = torch.randint(0, 16, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_nibbles(codes)
    assert packed.shape == (shape[0], (shape[1] + 1) // 2)
    assert torch.equal(unpack_nibbles(packed, shape[1]), codes)


def test_bit_order_is_documented_lsb_first():
    bits = torch.tensor([[True, False, False, False, False, False, False, False, True]])
    assert pack_bits(bits).tolist() == [[1, 1]]
    assert pack_nibbles(torch.tensor([[3, 10]], dtype=torch.uint8)).tolist() == [[3 | (10 << 4)]]
