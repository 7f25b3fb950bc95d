import pytest
import torch

from ptq161.calibration.stats import HessianAccumulator
from ptq161.errors import PTQ161Error
from ptq161.methods.base import get_method
from ptq161.methods.billm import BiLLMConfig, billm_layer
from ptq161.methods.gptq import GPTQConfig, gptq_layer
from ptq161.methods.gptq_math import gptq_quantize, prepare_hessian
from ptq161.methods.pbllm import PBLLMConfig, pbllm_layer
from ptq161.methods.quant_math import apply_binary, binarize, binarize_rows, residual_binarize
from ptq161.methods.rtn import RTNConfig, rtn_grouped


@pytest.fixture
def layer():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 256, generator=g) * 0.02
    # correlated inputs with uneven channel scales, as real activations are
    mix = torch.randn(64, 256, generator=g) * (torch.rand(256, generator=g) * 3 + 0.1)
    x = torch.randn(2048, 64, generator=g) @ mix + 0.1 * torch.randn(2048, 256, generator=g)
    acc = HessianAccumulator(256)
    acc.update(x)
    return w, x, acc.get()


def out_err(x, w, q):
    return ((x @ (q - w).T) ** 2).mean().item()


@pytest.mark.parametrize("bits,group", [(2, 0), (3, 0), (3, 128), (4, 0)])
def test_gptq_has_lower_output_error_than_rtn(layer, bits, group):
    w, x, h = layer
    q_gptq = gptq_layer(w, h, bits, group, 0.01, 128)
    q_rtn = rtn_grouped(w, bits, group)
    assert out_err(x, w, q_gptq) < 0.9 * out_err(x, w, q_rtn)


@pytest.mark.parametrize("search", ["saliency", "weight"])
def test_residual_binarization_beats_xnor_and_billm_beats_xnor(layer, search):
    w, x, h = layer
    xnor = binarize(w)
    res2 = residual_binarize(w, None, 2)
    assert ((res2 - w) ** 2).sum() < 0.7 * ((xnor - w) ** 2).sum()
    q, cols, blocks = billm_layer(w, h, BiLLMConfig(search=search))
    assert blocks == 2 and 2 <= cols <= 98
    assert ((q - w) ** 2).sum() < ((xnor - w) ** 2).sum()
    assert out_err(x, w, q) < out_err(x, w, xnor)


def test_billm_compensation_between_blocks_lowers_output_error(layer):
    w, x, h = layer
    q_comp = billm_layer(w, h, BiLLMConfig())[0]
    q_none = billm_layer(w, h, BiLLMConfig(compensation="none"))[0]
    # the first block is quantized identically; only the later blocks see the compensated weights
    assert torch.equal(q_comp[:, :128], q_none[:, :128])
    assert out_err(x, w, q_comp) < out_err(x, w, q_none)


def test_pbllm_with_all_salient_equals_8bit_gptq(layer):
    w, _, h = layer
    q_pb, n_sal = pbllm_layer(w, h, PBLLMConfig(salient_ratio=1.0))
    assert n_sal == w.numel()
    assert torch.equal(q_pb, gptq_layer(w, h, 8, 0, 0.01, 128))


def test_pbllm_with_no_salient_equals_xnor_with_compensation(layer):
    w, x, h = layer
    q_pb, n_sal = pbllm_layer(w, h, PBLLMConfig(salient_ratio=0.0))
    wp, hinv = prepare_hessian(w, h, 0.01)
    mu, alpha = binarize_rows(wp)
    ref = gptq_quantize(wp, hinv, lambda col, _i: apply_binary(col[:, None], mu, alpha)[:, 0], 128)
    assert n_sal == 0 and torch.equal(q_pb, ref)
    assert out_err(x, w, q_pb) < out_err(x, w, binarize(w))


def test_bit_counts_match_hand_computed_values():
    m, n = 6, 256
    rtn = get_method("rtn")
    assert rtn(RTNConfig(bits=2)).bits(m, n, {}) == (2.0, 6 * 256 * 2 + 6 * (16 + 2))
    assert rtn(RTNConfig(bits=3, group_size=128)).bits(m, n, {}) == (3.0, 6 * 256 * 3 + 6 * 2 * (16 + 3))
    assert rtn(RTNConfig(bits=1)).bits(m, n, {}) == (1.0, 6 * 256 + 6 * 32)
    gptq = get_method("gptq")(GPTQConfig(bits=2, group_size=128))
    assert gptq.bits(m, n, {}) == (2.0, 6 * 256 * 2 + 6 * 2 * (16 + 2))
    pb = get_method("pbllm")(PBLLMConfig())
    paper, stored = pb.bits(m, n, {"salient": 154})
    assert stored == (1536 - 154) + 8 * 154 + 1536 + 6 * 24 + 6 * 32
    assert paper == pytest.approx((1536 - 154 + 8 * 154) / 1536 + 1)
    bi = get_method("billm")(BiLLMConfig())
    _, stored = bi.bits(m, n, {"salient_cols": 10, "blocks": 2})
    assert stored == 1536 + 6 * 10 + 6 * 246 + 256 + 2 * 6 * 128


@pytest.mark.parametrize(
    "name,bad",
    [
        ("rtn", dict(bits=9)),
        ("gptq", dict(bits=1)),
        ("gptq", dict(group_size=64)),
        ("pbllm", dict(salient_ratio=1.5)),
        ("billm", dict(max_salient=0)),
        ("billm", dict(search="rows")),
        ("billm", dict(compensation="intra")),
    ],
)
def test_unsupported_options_are_rejected(name, bad):
    with pytest.raises(PTQ161Error):
        get_method(name).config_class(**bad)


@pytest.mark.parametrize(
    "method,opts", [("rtn", dict(bits=3)), ("rtn", dict(bits=1)), ("gptq", dict(bits=2)), ("pbllm", {}), ("billm", {})]
)
def test_every_method_runs_on_the_shared_driver(tiny_model_dir, text_file, tmp_path, method, opts):
    from ptq161 import CalibConfig, evaluate_perplexity, quantize
    from ptq161.artifact import read_meta, read_parts, verify_parts

    impl = get_method(method)(get_method(method).config_class(**opts))
    out = tmp_path / method
    res = quantize(
        str(tiny_model_dir),
        method,
        method_config=impl.config,
        calib=CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=64),
        output=out,
        progress=False,
    )
    assert verify_parts(impl, res.model, read_parts(out)) == 0.0
    meta = read_meta(out)
    assert meta["method"] == method and meta["config"] == impl.config.to_dict()
    assert len(meta["bits"]["layers"]) == 14 and meta["bits"]["stored_bits_per_weight"] > 1
    r = evaluate_perplexity(res.model, res.tokenizer, [f"text:{text_file}"], seqlen=128, progress=False)[0]
    assert r.ppl > 1 and r.windows > 0
