import numpy as np
import pytest
import torch

from ptq161.nn.int8 import Int8Linear
from ptq161.primitives.kernels import int8_matvec
from ptq161.primitives.vnni import int8_vnni_matvec, row_blocked_int8


def _case(m: int, n: int, tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (m, n)).astype(np.int8)
    x = rng.standard_normal((tokens, n)).astype(np.float32)
    x[:, 0] *= 40  # an outlier column widens the fixed-point range
    scale = (rng.random(m) * 0.01 + 1e-4).astype(np.float32)
    return w, x, scale


def _fixed_point(x: np.ndarray) -> np.ndarray:
    """The kernel's input x_hat = lo + q * round((x - lo) / q), q = range / (2^24 - 1), in float64."""
    x = x.astype(np.float64)
    lo, hi = x.min(), x.max()
    q = (hi - lo) / (2**24 - 1) if hi > lo else 1.0
    return lo + q * np.clip(np.rint((x - lo) / q), 0, 2**24 - 1)


@pytest.mark.parametrize(("m", "n", "tokens"), [(37, 22, 1), (64, 128, 3), (16, 4, 1), (300, 577, 2)])
def test_byte_products_are_exact_sums_of_the_fixed_point_input(m, n, tokens):
    w, x, scale = _case(m, n, tokens)
    w_blk, rowsum = row_blocked_int8(w)
    assert w_blk.shape == (-(-m // 16), -(-n // 4), 16) and np.array_equal(rowsum, w.astype(np.int64).sum(1))
    out = np.empty((tokens, m), dtype=np.float32)
    int8_vnni_matvec(x, w_blk, rowsum, scale, out, 2)
    for t in range(tokens):
        exact = (w.astype(np.float64) @ _fixed_point(x[t])) * scale
        # integer sums are exact: what is left is the float64 combination and the float32 output rounding
        assert np.all(np.abs(out[t] - exact) <= 2.0**-23 * np.abs(exact) + 1e-9)
        ref = (w.astype(np.float64) @ x[t].astype(np.float64)) * scale
        bound = scale * np.abs(w).sum(1) * (x[t].max() - x[t].min()) / (2**24 - 1)  # |x - x_hat| <= q / 2
        assert np.all(np.abs(out[t] - ref) <= bound + 2.0**-23 * np.abs(ref) + 1e-9)


def test_constant_input_and_zero_rows():
    w, _, scale = _case(20, 8, 1)
    w[3] = 0
    x = np.full((1, 8), 0.75, dtype=np.float32)  # max == min: q falls back to 1, every byte 0
    w_blk, rowsum = row_blocked_int8(w)
    out = np.empty((1, 20), dtype=np.float32)
    int8_vnni_matvec(x, w_blk, rowsum, scale, out, 1)
    ref = (w.astype(np.float64) @ x[0].astype(np.float64)) * scale
    assert np.allclose(out[0], ref, rtol=1e-6, atol=0) and out[0, 3] == 0.0


def test_agrees_with_the_float_kernel_as_closely_as_float32_allows():
    w, x, scale = _case(1000, 576, 1, seed=4)
    w_blk, rowsum = row_blocked_int8(w)
    a, b = np.empty((1, 1000), np.float32), np.empty((1, 1000), np.float32)
    int8_vnni_matvec(x, w_blk, rowsum, scale, a, 2)
    int8_matvec(x, w, scale, b)
    ref = (w.astype(np.float64) @ x[0].astype(np.float64)) * scale
    err_vnni, err_float = np.abs(a[0] - ref).max(), np.abs(b[0] - ref).max()
    assert err_vnni <= 4 * err_float + 1e-6


def test_int8_linear_uses_either_kernel_to_the_same_logits():
    w = torch.randn(200, 64, generator=torch.Generator().manual_seed(1))
    lin = Int8Linear.from_weight(w)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(2))
    ref = (x.double() @ lin.dequantize().double().T).float()
    outs = []
    for vnni in (True, False):
        out = np.empty((1, 200), np.float32)
        lin._kernel(x.numpy(), out, vnni=vnni)
        outs.append(torch.from_numpy(out))
    assert torch.allclose(outs[0], ref, atol=1e-5) and torch.allclose(outs[1], ref, atol=1e-5)
    with torch.no_grad():  # the module's own forward (decode-sized call) too
        assert torch.allclose(lin(x), ref, atol=1e-5)


def test_blocked_copy_follows_in_place_changes_of_the_weights():
    lin = Int8Linear.from_weight(torch.randn(32, 16, generator=torch.Generator().manual_seed(5)))
    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(6))
    out = np.empty((1, 32), np.float32)
    lin._kernel(x.numpy(), out, vnni=True)
    other = Int8Linear.from_weight(torch.randn(32, 16, generator=torch.Generator().manual_seed(7)))
    lin.load_state_dict(other.state_dict())  # copies into the same buffers
    lin._kernel(x.numpy(), out, vnni=True)
    ref = (x.double() @ other.dequantize().double().T).float()
    assert torch.allclose(torch.from_numpy(out), ref, atol=1e-5)


def test_kernel_runs_on_a_head_built_in_inference_mode():
    with torch.inference_mode():  # its buffers are inference tensors, without a version counter
        lin = Int8Linear.from_weight(torch.randn(32, 16, generator=torch.Generator().manual_seed(8)))
        x = torch.randn(1, 16, generator=torch.Generator().manual_seed(9))
        assert torch.allclose(lin(x), (x.double() @ lin.dequantize().double().T).float(), atol=1e-5)
