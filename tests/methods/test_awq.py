import pytest
import torch
from tests.helpers import hessian_layer, out_err
from torch import nn

from ptq161.errors import PTQ161Error
from ptq161.methods.awq import AWQ, AWQConfig, awq_layer, awq_scale, can_absorb, output_error, search_clip, search_scale
from ptq161.primitives.quant import rtn_grouped, rtn_stored_bits


def _outlier_layer():
    """hessian_layer with a few input channels 20x larger (the activation outliers AWQ protects)."""
    w, x, _ = hessian_layer(3)
    x = x.clone()
    x[:, :4] *= 20
    return w, x, x.T @ x


def test_output_error_is_the_squared_output_error_through_the_gram_matrix():
    w, x, _ = hessian_layer()
    q = rtn_grouped(w, 3, 128)
    assert torch.isclose(output_error(w, q, x.T @ x), ((x @ (w - q).T) ** 2).sum(), rtol=1e-4)


def test_scale_ratio_zero_is_plain_rtn_so_the_search_never_loses_to_it():
    w, x, h = _outlier_layer()
    assert torch.allclose(awq_scale(x.abs().mean(0), 0.0), torch.ones(256))
    s, ratio = search_scale([w], h, x.abs().mean(0), 3, 128, 20)
    q_awq = rtn_grouped(w * s, 3, 128) / s
    q_rtn = rtn_grouped(w, 3, 128)
    assert ratio > 0  # the outlier channels pull the search away from plain RTN
    assert out_err(x, w, q_awq) < 0.9 * out_err(x, w, q_rtn)


def test_clipping_never_increases_any_group_error_and_helps_overall():
    w, x, h = _outlier_layer()
    w = w.clone()
    w[:, 100] *= 8  # an outlier weight column widens its groups' ranges
    q_clip = rtn_grouped(search_clip(w, h, 2, 128, 20, 0.5), 2, 128)
    q_none = rtn_grouped(w, 2, 128)
    for j in (0, 128):
        d_c, d_n = (w - q_clip)[:, j : j + 128], (w - q_none)[:, j : j + 128]
        hb = h[j : j + 128, j : j + 128]
        per_row_c = ((d_c @ hb) * d_c).sum(1)
        per_row_n = ((d_n @ hb) * d_n).sum(1)
        assert torch.all(per_row_c <= per_row_n * (1 + 1e-4))
    assert out_err(x, w, q_clip) < out_err(x, w, q_none)


def test_awq_layer_with_unit_scale_and_no_clip_is_rtn():
    w, _, h = hessian_layer()
    cfg = AWQConfig(bits=3)
    assert torch.equal(awq_layer(w, h, torch.ones(256), cfg, clip=False), rtn_grouped(w, 3, 128))


def test_only_modules_of_the_right_width_absorb_a_scale():
    block = nn.Module()
    block.norm = nn.LayerNorm(16)
    block.v = nn.Linear(16, 8)  # grouped-query attention: 8 outputs feed a 16-wide o_proj
    block.up = nn.Linear(16, 32)
    assert can_absorb(block, "norm", 16) and can_absorb(block, "up", 32)
    assert not can_absorb(block, "v", 16) and not can_absorb(block, "missing", 16) and not can_absorb(block, None, 16)


def test_awq_bits_are_rtns_and_bad_settings_are_refused():
    assert AWQ(AWQConfig(bits=3)).bits(64, 256, {})[1] == rtn_stored_bits(64, 256, 3, 128)
    with pytest.raises(PTQ161Error):
        AWQConfig(bits=1)
    with pytest.raises(PTQ161Error):
        AWQConfig(max_shrink=1.0)
