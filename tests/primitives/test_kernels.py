import numpy as np
import pytest
import torch
from tests.helpers import random_parts

from ptq161.nn import PackedPTQ161Linear
from ptq161.primitives.kernels import packed_matvec


@pytest.mark.parametrize("permute", [False, True])
@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5])
def test_kernel_row_chunks_cover_every_row_once(n_chunks, permute):
    """Each thread's chunk builds its own tables: any chunk count gives the reference product,
    with either sign-sum kernel (the nibble-table one runs on any CPU, only its speed needs AVX-512)."""
    parts = random_parts(65, 100, 21, seed=3)
    mod = PackedPTQ161Linear.from_parts(parts)
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    out = np.full((3, 65), np.nan, dtype=np.float32)
    packed_matvec(x.numpy(), mod.kernel_buffers(permute), out, n_chunks, permute)
    assert torch.allclose(torch.from_numpy(out), x @ mod.dequantize().T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("m", "n", "n_sal"),
    [
        (64, 576, 115),  # 461 binary columns: 58 sign bytes, a ragged last byte; 4 blocks of 16 rows
        (48, 136, 8),  # 128 binary columns: exactly 16 bytes, 4 code bytes
        (40, 144, 9),  # 135 binary columns, 5 salient (an odd code count); 2 blocks + 8 rows past them
        (13, 40, 7),  # fewer rows than a block: every row from the nibble tables one by one
        (17, 20, 12),  # 8 binary columns: a single sign byte; one block and one row past it
    ],
)
def test_nibble_table_kernel_equals_the_byte_tables(m, n, n_sal):
    """The nibble-table kernel reads bit t of byte g as column 8 g + t (the low nibble first) from
    the row-blocked copy: its products equal the byte-table kernel's and the dense product, for
    full blocks of 16 rows and for the rows past the last block."""
    mod = PackedPTQ161Linear.from_parts(random_parts(m, n, n_sal, seed=m + n))
    x = torch.randn(2, n, generator=torch.Generator().manual_seed(n))
    outs = []
    for permute in (False, True):
        out = np.full((2, m), np.nan, dtype=np.float32)
        packed_matvec(x.numpy(), mod.kernel_buffers(permute), out, 2, permute)  # 2 chunks: lo > 0 too
        outs.append(torch.from_numpy(out))
    ref = x.double() @ mod.dequantize().double().T
    for out in outs:
        assert torch.allclose(out.double(), ref, atol=2e-5, rtol=1e-5), (out.double() - ref).abs().max()
    assert torch.allclose(outs[0], outs[1], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("m", "n", "n_sal", "tokens", "n_chunks"),
    [
        (64, 576, 115, 21, 2),  # 5 passes of 4 tokens + 1 single token; 2 blocks a chunk (no 4-block tile)
        (160, 576, 115, 13, 2),  # 5 blocks a chunk: one 4-block tile and one block after it
        (256, 1536, 307, 8, 1),  # one chunk of 16 blocks: four 4-block tiles (down_proj's width)
        (40, 144, 9, 70, 2),  # two token tiles (64 + 6); 2 blocks + 8 rows past them
        (13, 40, 7, 9, 2),  # no full block: every row by the one-token row path
        (48, 136, 0, 16, 2),  # no salient column
        (272, 136, 8, 4, 3),  # 3 chunks of 96, 96, 80 rows: tiles start at each chunk's first block
    ],
)
def test_nibble_table_matmul_equals_the_dense_product(m, n, n_sal, tokens, n_chunks):
    """The many-token kernel (prefill on AVX-512 CPUs; compiled and run on any CPU here): every
    token of every tile, passes of 4 tokens over tiles of 4 blocks and over single blocks, single
    tokens and rows past the last block."""
    from ptq161.primitives.kernels import packed_matmul

    mod = PackedPTQ161Linear.from_parts(random_parts(m, n, n_sal, seed=tokens))
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(m))
    out = np.full((tokens, m), np.nan, dtype=np.float32)
    packed_matmul(x.numpy(), mod.kernel_buffers(True), out, n_chunks)
    ref = x.double() @ mod.dequantize().double().T
    assert torch.allclose(torch.from_numpy(out).double(), ref, atol=2e-5, rtol=1e-5), (out - ref.numpy()).max()
