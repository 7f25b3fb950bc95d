import numpy as np
import pytest
import torch
from tests.helpers import random_parts

from ptq161.nn import PackedPTQ161Linear
from ptq161.primitives.kernels import packed_matvec


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5])
def test_kernel_row_chunks_cover_every_row_once(n_chunks):
    """Each thread's chunk builds its own tables: any chunk count gives the reference product."""
    parts = random_parts(65, 100, 21, seed=3)
    mod = PackedPTQ161Linear.from_parts(parts)
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    out = np.full((3, 65), np.nan, dtype=np.float32)
    packed_matvec(x.numpy(), mod.kernel_buffers(), out, n_chunks)
    assert torch.allclose(torch.from_numpy(out), x @ mod.dequantize().T, atol=1e-5, rtol=1e-5)
