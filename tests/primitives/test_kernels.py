import numpy as np
import pytest
import torch
from tests.helpers import random_parts

from ptq161.nn import PackedPTQ161Linear
from ptq161.primitives.kernels import packed_matvec


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5])
def test_kernel_row_chunks_cover_every_row_once(n_chunks, masked):
    """Each thread's chunk builds its own tables: any chunk count gives the reference product,
    with either sign-sum kernel (the masked one runs on any CPU, only its speed needs AVX-512)."""
    parts = random_parts(65, 100, 21, seed=3)
    mod = PackedPTQ161Linear.from_parts(parts)
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    out = np.full((3, 65), np.nan, dtype=np.float32)
    packed_matvec(x.numpy(), mod.kernel_buffers(), out, n_chunks, masked)
    assert torch.allclose(torch.from_numpy(out), x @ mod.dequantize().T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("m", "n", "n_sal"),
    [
        (64, 576, 115),  # 461 binary columns: 58 sign bytes, 29 16-bit masks
        (24, 136, 8),  # 128 binary columns: exactly 8 masks
        (24, 144, 8),  # 136 binary columns: 17 bytes, an odd last byte (8-lane step)
        (13, 40, 7),  # 33 binary columns: odd bytes, ragged last byte, rows not a multiple of 8
        (9, 20, 12),  # 8 binary columns: a single byte, no 16-bit mask at all
    ],
)
def test_masked_kernel_equals_the_table_lookups(m, n, n_sal):
    """The masked-add kernel reads bit t of byte g as column 8 g + t (little-endian 16-bit masks):
    its products equal the lookup kernel's and the dense product, whatever the byte count's
    parity, and rows past the last full group of 8 are summed too."""
    mod = PackedPTQ161Linear.from_parts(random_parts(m, n, n_sal, seed=m + n))
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(n))
    outs = []
    for masked in (False, True):
        out = np.full((2, m), np.nan, dtype=np.float32)
        packed_matvec(x.numpy(), mod.kernel_buffers(), out, 2, masked)
        outs.append(torch.from_numpy(out))
    ref = x.double() @ mod.dequantize().double().T
    for out in outs:
        assert torch.allclose(out.double(), ref, atol=2e-5, rtol=1e-5), (out.double() - ref).abs().max()
    assert torch.allclose(outs[0], outs[1], atol=2e-5, rtol=1e-5)
