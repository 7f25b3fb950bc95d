import itertools

import pytest
import torch
from tests.helpers import hessian_layer, out_err

from ptq161.errors import PTQ161Error
from ptq161.methods.arb import ARB, ARBConfig, arb_block
from ptq161.methods.billm import BiLLMConfig, billm_block, billm_layer
from ptq161.primitives.quant import arb_rc_binarize, arb_rc_residual2, binarize, rc_scales, residual_binarize


def _column_deviating(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 96, generator=g) * (0.2 + 3 * torch.rand(1, 96, generator=g))
    return w, torch.rand(48, 96, generator=g) > 0.3


def _err(w, q, mask):
    return ((w * mask - q) ** 2).sum().item()


def test_rc_scales_alternating_updates_never_increase_the_error():
    w, mask = _column_deviating()
    errs = [_err(w, arb_rc_binarize(w, mask, it), mask) for it in (0, 1, 2, 5, 15)]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(errs))
    assert errs[-1] < errs[0]
    errs2 = [_err(w, arb_rc_residual2(w, mask, it), mask) for it in (0, 1, 2, 5, 15)]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(errs2))
    assert errs2[-1] < 0.9 * errs2[0]


def test_rc_scales_converge_to_the_closed_form_least_squares_optimum():
    """At the fixed point each scale is the exact least-squares solution given the other (zero gradient)."""
    w, mask = _column_deviating(1)
    sign = torch.where(w >= 0, 1.0, -1.0)
    a_r, a_c = rc_scales(w.double(), sign.double(), mask, 500)
    resid = (w.double() - a_r[:, None] * a_c[None, :] * sign) * mask
    grad_r = (resid * sign * a_c[None, :]).sum(dim=1)
    grad_c = (resid * sign * a_r[:, None]).sum(dim=0)
    assert grad_r.abs().max() < 1e-8 and grad_c.abs().max() < 1e-8


def test_arb_rc_beats_the_per_row_binarizations_on_column_deviating_weights():
    w, mask = _column_deviating(2)
    assert _err(w, arb_rc_binarize(w, mask), mask) < 0.9 * _err(w, binarize(w, mask), mask)
    assert _err(w, arb_rc_residual2(w, mask), mask) < 0.9 * _err(w, residual_binarize(w, mask, 2), mask)
    assert torch.all(arb_rc_binarize(w, mask)[~mask] == 0)


def test_arb_layer_beats_billm_with_the_same_masks():
    w, x, h = hessian_layer()
    q_arb, cols, blocks = billm_layer(w, h, ARBConfig(), arb_block)
    q_billm, cols_b, _ = billm_layer(w, h, BiLLMConfig(), billm_block)
    assert blocks == 2 and cols == cols_b  # same salient split
    assert ((q_arb - w) ** 2).sum() < ((q_billm - w) ** 2).sum()
    assert out_err(x, w, q_arb) < out_err(x, w, q_billm)


def test_arb_bits_count_both_scale_vectors_and_no_means():
    _, stored = ARB(ARBConfig()).bits(6, 256, {"salient_cols": 10, "blocks": 2})
    assert stored == 1536 + 6 * 10 + 6 * 246 + 256 + 2 * 6 * 4 * 16 + 256 * 2 * 16
    with pytest.raises(PTQ161Error):
        ARBConfig(salient_order=3)
