"""Grouped-RTN baselines (GPTQ, OmniQuant) store codes, per-group scales and zero points; the end-to-end
stage trains their scales and zero points with the codes fixed (EfficientQAT's E2E-QP)."""

import dataclasses

import pytest
import torch
from tests.helpers import hessian_layer, quantize_with

from ptq161 import CalibConfig, resolve_recipe
from ptq161.errors import PTQ161Error
from ptq161.methods.gptq import GPTQ, GPTQConfig, gptq_layer
from ptq161.methods.layerwise import GroupedQuantLinear, grouped_weight
from ptq161.methods.omniquant import OmniQuantConfig, lwc_codes
from ptq161.pipeline.e2e import E2EConfig
from ptq161.pipeline.output_dir import read_parts
from ptq161.primitives.device import can_compile
from ptq161.primitives.quant import grouped_dequantize


@pytest.mark.parametrize("bits,group", [(2, 0), (2, 128), (3, 128)])
def test_gptq_parts_dequantize_to_gptqs_weight_bit_for_bit(bits, group):
    w, _, h = hessian_layer()
    method = GPTQ(GPTQConfig(bits=bits, group_size=group))
    parts = method.layer_parts(w, h)
    assert torch.equal(method.dequantize(parts), gptq_layer(w, h, bits, group, 0.01, 128))
    assert parts["codes"].dtype == torch.uint8 and int(parts["codes"].max()) < 2**bits
    assert parts["scale"].shape == parts["zero"].shape == (48, 256 // group if group else 1)
    assert method.layer_bits(parts).stored_bits == method.bits(48, 256, {})[1]


def test_omniquant_codes_dequantize_to_its_stored_weight_and_a_ragged_last_group():
    w = torch.randn(8, 200, generator=torch.Generator().manual_seed(0))  # 200 = 128 + 72: a short last group
    gamma = beta = torch.full((8, 2, 1), 2.0)
    codes, scale, zero = lwc_codes(w, gamma, beta, 2, 128)
    assert codes.shape == (8, 200) and scale.shape == zero.shape == (8, 2)
    w_hat = grouped_dequantize(codes, scale, zero, 128)
    for g, cols in enumerate((slice(0, 128), slice(128, 200))):
        want = (codes[:, cols].float() - zero[:, g : g + 1].float()) * scale[:, g : g + 1].float()
        assert torch.equal(w_hat[:, cols], want)


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="no C++ compiler")
@pytest.mark.parametrize("n", [192, 256])  # 192 = 128 + 64: a short last group, as smollm2's 576 = 4.5 x 128
def test_grouped_dequantize_compiles_to_the_eager_values_and_gradients(n):
    """torch 2.13's inductor got an indexed gather's backward (index out of bounds) and an expanded view sliced
    to n columns (NaN) wrong on a short last group; the compiled function must equal eager, gradients too."""
    gen = torch.Generator().manual_seed(0)
    groups = -(-n // 128)
    codes = torch.randint(0, 4, (8, n), dtype=torch.uint8, generator=gen)
    scale0, zero0 = torch.rand(8, groups, generator=gen) + 0.5, torch.randint(0, 4, (8, groups), generator=gen)
    x = torch.randn(5, n, generator=gen)

    def loss(fn):
        scale, zero = scale0.clone().requires_grad_(), zero0.float().requires_grad_()
        out = (x @ fn(codes, scale, zero, 128).T).pow(2).sum()
        out.backward()
        return out.detach(), scale.grad, zero.grad

    cols = torch.arange(n) // 128
    assert torch.equal(grouped_dequantize(codes, scale0, zero0, 128), (codes - zero0[:, cols]) * scale0[:, cols])
    for eager, compiled in zip(loss(grouped_dequantize), loss(torch.compile(grouped_dequantize)), strict=True):
        assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-3)


def test_grouped_trainable_layer_starts_at_the_stored_weight_and_learns_its_scales():
    w, x, h = hessian_layer()
    parts = GPTQ(GPTQConfig(bits=2, group_size=128)).layer_parts(w, h)
    mod = GroupedQuantLinear(parts, None)
    assert torch.equal(mod.weight(), grouped_weight(parts))
    stored = mod.parts()
    assert torch.equal(stored["codes"], parts["codes"]) and torch.equal(stored["scale"], parts["scale"])
    assert stored["zero"].dtype == torch.float16 and torch.equal(stored["zero"].float(), parts["zero"].float())
    opt = torch.optim.Adam(mod.parameters(), lr=1e-2)
    target = x @ w.T
    errs = []
    for _ in range(30):
        loss = (mod(x) - target).pow(2).mean()
        errs.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert errs[-1] < 0.9 * errs[0]  # the output error falls with the codes fixed
    assert torch.equal(mod.parts()["codes"], parts["codes"])


E2E = E2EConfig(steps=40, lr=5e-2, topk=32, heldout=2)


@pytest.mark.parametrize("method,config", [("gptq", GPTQConfig(bits=2)), ("omniquant", OmniQuantConfig(epochs=1))])
def test_e2e_after_a_grouped_baseline_lowers_the_kl_keeps_the_codes_and_counts_fp16_zeros(
    method, config, tiny_model_dir, text_file, tmp_path
):
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=6, seqlen=64)
    kw = dict(method=method, method_config=config, calib=calib, progress=False)
    plain = quantize_with(str(tiny_model_dir), output=tmp_path / "plain", **kw)
    res = quantize_with(str(tiny_model_dir), output=tmp_path / "e2e", e2e=E2E, **kw)
    log = res.meta["e2e_log"]
    assert log["train_kl_after"] < 0.7 * log["train_kl_before"]
    a, b = read_parts(tmp_path / "e2e"), read_parts(tmp_path / "plain")
    for layer in a:
        assert torch.equal(a[layer]["codes"], b[layer]["codes"])
        assert a[layer]["zero"].dtype == torch.float16 and b[layer]["zero"].dtype == torch.uint8
    bits_e2e, bits_plain = res.meta["bits"]["stored_bits_per_weight"], plain.meta["bits"]["stored_bits_per_weight"]
    assert bits_plain < bits_e2e < bits_plain + 14 / 64  # a zero point per group of <= 64 columns: 16 bits, not 2


def test_a_baseline_from_a_recipe_with_a_stage_runs_without_it_unless_asked():
    assert resolve_recipe("cpu", method="gptq").e2e.steps == 0
    assert resolve_recipe("cpu", method="gptq", e2e_steps=7).e2e.steps == 7
    with pytest.raises(PTQ161Error, match="no end-to-end stage"):
        resolve_recipe("cpu", method="rtn", e2e_steps=7)
    assert dataclasses.asdict(resolve_recipe("cpu").e2e)["steps"] > 0
    with pytest.raises(PTQ161Error, match="signs"):
        GPTQ(GPTQConfig()).trainable_module(GPTQ(GPTQConfig()).layer_parts(*hessian_layer()[::2]), None, True)
