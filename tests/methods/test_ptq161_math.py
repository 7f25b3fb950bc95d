import math

import pytest
import torch

from ptq161.methods import ptq161_math as pm
from ptq161.methods.ptq161 import expected_bits_per_weight


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_centred_scale_is_the_closed_form_least_squares_optimum():
    w = randn(8, 64) * 0.02 + 0.003
    sign, mu, s = pm.binary_init(w, "centred")

    def err(scale):
        return ((w - (scale[:, None] * sign + mu[:, None])) ** 2).sum(dim=1)

    best = err(s)
    for delta in (-1e-3, -1e-4, 1e-4, 1e-3):
        assert torch.all(err(s + delta) > best)
    # d/ds of the error is zero at the optimum
    grad = (-2 * sign * (w - (s[:, None] * sign + mu[:, None]))).sum(dim=1)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-6)


def test_uncentred_init_is_mean_abs_of_nonzero_entries():
    w = torch.tensor([[1.0, -3.0, 0.0, 2.0]])
    _, mu, s = pm.binary_init(w, "uncentred")
    assert s.item() == pytest.approx(2.0) and mu.item() == pytest.approx(0.0)


def test_mask_selects_largest_activation_channels():
    stat = torch.rand(100, generator=torch.Generator().manual_seed(1))
    mask = pm.salient_mask(stat, 0.2)
    assert int(mask.sum()) == 21  # floor(0.2 n) + 1, as the reference code
    assert stat[mask].min() > stat[~mask].max()


def test_block_loss_is_zero_at_the_target_and_positive_elsewhere():
    t = randn(2, 5, 8)
    assert pm.block_loss(t, t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert pm.block_loss(t + 0.1, t, t).item() > 0
    assert pm.block_loss(t + 0.1, t, t, use_cosine=False).item() == pytest.approx(2 * 0.01, rel=1e-4)


def test_bits_per_weight_at_paper_width_and_on_smollm2_shapes():
    assert expected_bits_per_weight(4096, 4096) <= 1.62
    assert pm.paper_bits_per_weight(4096, 4096, 820) == pytest.approx(1.6086, abs=1e-3)
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    total = sum(m * n for m, n in shapes)
    bpw = sum(expected_bits_per_weight(m, n) * m * n for m, n in shapes) / total
    assert bpw <= 1.72
    # hand count for a small layer: 6 x 10, 3 salient columns
    assert pm.stored_bits(6, 10, 3) == 10 + 6 * 7 + 4 * 6 * 3 + (16 + 4 + 32) * 6 + 16 * 7
    assert math.isclose(expected_bits_per_weight(6, 10), pm.stored_bits(6, 10, 3) / 60)


def test_normalized_loss_is_mse_over_a_known_per_channel_factor():
    t = randn(2, 5, 4)
    y = t.clone()
    y[..., 2] += 0.5  # error in channel 2 only
    norm = pm.channel_norm(t)
    plain = pm.mse_terms(y, t, t, "paper")[0]
    scaled = pm.mse_terms(y, t, t, "normalized", norm=norm)[0]
    assert torch.allclose(scaled, plain / norm[2], rtol=1e-6)
    assert torch.allclose(norm, t.pow(2).mean(dim=(0, 1)))
    assert torch.allclose(pm.mse_terms(y, t, t, "normalized", norm=torch.ones(4))[0], plain)


def test_delta_loss_drops_the_inherited_input_error():
    x_fp = randn(2, 5, 4, seed=1)
    x_q = x_fp + 0.3 * randn(2, 5, 4, seed=2)  # error left by earlier blocks
    t1 = x_fp + randn(2, 5, 4, seed=3)  # residual block: output = input + its change
    y = x_q + (t1 - x_fp)  # a quantized block that reproduces the FP change exactly
    paper = pm.mse_terms(y, t1, y, "paper", x_fp, x_q)
    delta = pm.mse_terms(y, t1, y, "delta", x_fp, x_q)
    assert paper[0] > 0.05 and delta[0] < 1e-12  # only the paper's term sees the inherited error
    assert delta[1] == paper[1]  # the T2 term is the same in both


def test_binarization_bound_ranks_columns_by_activation_times_error():
    w = torch.ones(4, 3)
    w[:, 1] = torch.tensor([3.0, -2.0, 5.0, 0.5])  # the only column far from its row binarization
    b = pm.binarization_bound(w, torch.tensor([1.0, 1.0, 1.0]))
    assert int(b.argmax()) == 1
    assert torch.allclose(pm.binarization_bound(w, torch.tensor([2.0, 2.0, 2.0])), 2 * b)


def test_cosine_warmup_schedule():
    assert pm.cosine_warmup(0, 100, 10) == pytest.approx(0.1)
    assert pm.cosine_warmup(9, 100, 10) == pytest.approx(1.0)
    assert pm.cosine_warmup(10, 100, 10) == pytest.approx(1.0)
    assert pm.cosine_warmup(55, 100, 10) == pytest.approx(0.5)
    assert pm.cosine_warmup(100, 100, 10) == pytest.approx(0.0)


def correlated_inputs(n, tokens=512, seed=1):
    """Inputs with strongly correlated channels and a few large ones: X [tokens, n], H = 2 X^T X / tokens."""
    mixing = torch.randn(n // 4, n, generator=torch.Generator().manual_seed(0))  # the same distribution
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, n // 4, generator=g) @ mixing
    x = x + 0.3 * torch.randn(tokens, n, generator=g)
    x[:, : n // 8] *= 4
    return x, 2 * x.T @ x / tokens


def w_hat(mask, sign, mu, s, codes, scale, zero):
    """The initial W_hat [m, n] of either init's parts (before any training)."""
    from ptq161.primitives.quant import assemble, rtn_dequantize

    return assemble(mask, rtn_dequantize(codes, scale, zero), mu[:, None] + s[:, None] * sign)


def independent_weight(w, mask, bits=4):
    """W_hat of the independent init (the paper): sign(W - mu) with s, per-row RTN on the salient columns."""
    from ptq161.primitives.quant import rtn_asym_params, rtn_quantize

    sign, mu, s = pm.binary_init(w[:, ~mask])
    scale, zero = rtn_asym_params(w[:, mask], bits)
    return w_hat(mask, sign, mu, s, rtn_quantize(w[:, mask], scale, zero, bits), scale, zero)


def compensated_weight(w, h, mask):
    return w_hat(mask, *pm.compensated_init(w, h, mask))


def test_compensated_init_with_a_diagonal_hessian_is_the_independent_init():
    w = randn(16, 96) * 0.05
    mask = torch.zeros(96, dtype=torch.bool)
    mask[torch.randperm(96, generator=torch.Generator().manual_seed(3))[:20]] = True
    h = torch.diag(torch.rand(96, generator=torch.Generator().manual_seed(4)) + 0.5)
    sign, mu, s, codes, scale, _zero = pm.compensated_init(w, h, mask)
    sign0, mu0, s0 = pm.binary_init(w[:, ~mask])
    assert torch.equal(sign, sign0) and torch.equal(mu, mu0) and torch.equal(s, s0)
    assert torch.equal(compensated_weight(w, h, mask), independent_weight(w, mask))
    assert torch.equal(w_hat(mask, *pm.independent_init(w, mask)), independent_weight(w, mask))
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and scale.dtype == torch.float16


def test_compensated_init_lowers_the_layer_output_error_on_correlated_inputs():
    """GPTQ's objective ||(W - W_hat) X^T||^2: error feedback must beat choosing each column alone, on the
    calibration inputs and on fresh inputs from the same distribution."""
    n = 128
    w = randn(32, n, seed=5) * 0.05
    x, h = correlated_inputs(n)
    x_new, _ = correlated_inputs(n, seed=9)
    mask = pm.salient_mask(x.abs().mean(dim=0), 0.2)
    for inputs in (x, x_new):
        err_ind = ((w - independent_weight(w, mask)) @ inputs.T).pow(2).sum()
        err_cmp = ((w - compensated_weight(w, h, mask)) @ inputs.T).pow(2).sum()
        assert err_cmp < 0.8 * err_ind


def test_the_tail_of_the_hessian_factor_is_the_factor_of_the_tail_block():
    """What lets compensated_init's second pass reuse the first pass's factor: the trailing [k:, k:] block of
    the upper Cholesky factor of H^-1 is the upper Cholesky factor of (H[k:, k:])^-1 (H damped once)."""
    from ptq161.methods.gptq_math import prepare_hessian

    n, k = 96, 70
    _, h = correlated_inputs(n)
    h[5, :] = h[:, 5] = 0  # a dead input channel as well
    _, hinv = prepare_hessian(torch.zeros(1, n), h)
    damped = h.double().clone()
    damped[5, 5] = 1
    damped += 0.01 * damped.diag().mean() * torch.eye(n, dtype=torch.float64)
    tail = torch.linalg.cholesky(torch.linalg.inv(damped[k:, k:]), upper=True)
    assert torch.allclose(hinv[k:, k:].double(), tail, rtol=1e-5, atol=1e-6 * tail.abs().max().item())
