import pytest
from tests.helpers import quantize_with

from ptq161 import CalibConfig, evaluate_perplexity
from ptq161.errors import PTQ161Error
from ptq161.methods import METHODS, get_method
from ptq161.pipeline.output_dir import read_meta, read_parts, verify_parts


def test_the_table_names_each_method_by_its_own_name():
    assert list(METHODS) == ["ptq161", "rtn", "gptq", "awq", "omniquant", "pbllm", "billm", "arb"]
    assert all(cls.name == name for name, cls in METHODS.items())
    with pytest.raises(PTQ161Error, match="unknown method 'nosuch'; available: arb, awq, billm, gptq"):
        get_method("nosuch")


def test_only_ptq161_with_4_bit_salient_codes_packs():
    assert [name for name, cls in METHODS.items() if cls(cls.config_class()).packs] == ["ptq161"]
    ptq = METHODS["ptq161"]
    assert not ptq(ptq.config_class(salient_bits=3)).packs


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
        ("arb", dict(iters=-1)),
        ("awq", dict(bits=9)),
        ("omniquant", dict(lr=0.0)),
    ],
)
def test_unsupported_options_are_rejected(name, bad):
    with pytest.raises(PTQ161Error):
        get_method(name).config_class(**bad)


@pytest.mark.parametrize(
    "method,opts",
    [
        ("rtn", dict(bits=3)),
        ("rtn", dict(bits=1)),
        ("gptq", dict(bits=2)),
        ("pbllm", {}),
        ("billm", {}),
        ("arb", {}),
        ("awq", dict(bits=3)),
        ("omniquant", dict(bits=3, epochs=1)),
    ],
)
def test_every_method_runs_on_the_shared_driver(tiny_model_dir, text_file, tmp_path, method, opts):
    impl = get_method(method)(get_method(method).config_class(**opts))
    out = tmp_path / method
    res = quantize_with(
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
