import pytest
import torch
from tests.helpers import quantize_tiny

import ptq161
from ptq161.errors import PTQ161Error
from ptq161.nn import Int8Embedding, Int8Linear, PackedPTQ161Linear
from ptq161.pipeline.convert import dequantize_model_in_place


def test_int8_head_output_loads_and_dequantizes_to_the_same_logits(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "int8"
    res = quantize_tiny(tiny_model_dir, text_file, out, epochs=1, nsamples=2, head="int8")
    model, _ = ptq161.load(out)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.embed_tokens, Int8Embedding)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, res.model(ids).logits)
        packed_logits = model(ids).logits
    # dequantized for fast scoring: plain modules, the same logits
    assert dequantize_model_in_place(model) == 14 + 2
    assert not any(isinstance(m, Int8Linear | Int8Embedding | PackedPTQ161Linear) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, packed_logits, rtol=0, atol=1e-5)


def _tensors(path, part: str = "") -> dict:
    """Every tensor in the safetensors files of ``path`` whose name contains ``part``."""
    from safetensors.torch import load_file

    out = {}
    for f in path.glob("*.safetensors"):
        out |= {k: v for k, v in load_file(str(f)).items() if part in k}
    return out


def _quantize_argv(model_dir, text_file) -> list[str]:
    """``ptq161 quantize`` of a tiny model on a text file, one epoch, no end-to-end stage; --output comes next."""
    argv = ["quantize", str(model_dir), "--calib-dataset", f"text:{text_file}", "--calib-nsamples", "2"]
    return [*argv, "--calib-seqlen", "64", "--epochs", "1", "--e2e-steps", "0", "--output"]


def _load_logits(path, ids):
    model, _ = ptq161.load(path)
    with torch.no_grad():
        return model, model(ids).logits


def test_convert_adds_the_int8_head_that_quantize_would_have_written(tiny_model_dir, text_file, tmp_path):
    """quantize + convert --int8-head == quantize --int8-head: same tensors, same logits (tied tiny model)."""
    direct = tmp_path / "direct"
    quantize_tiny(tiny_model_dir, text_file, direct, epochs=1, nsamples=2, head="int8")
    plain = tmp_path / "plain"
    quantize_tiny(tiny_model_dir, text_file, plain, epochs=1, nsamples=2, head="fp32")
    converted = tmp_path / "converted"
    meta = ptq161.convert(plain, converted)
    assert meta["head"] == "int8" and "int8_head" not in meta and meta["converted_from"] == str(plain)
    assert meta["weights_format"] == "packed" and set(meta["files"]) >= {"config.json", "model.safetensors.index.json"}

    want, got = _tensors(direct), _tensors(converted)
    assert set(want) == set(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    model, logits = _load_logits(converted, ids)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.embed_tokens, Int8Embedding)
    assert torch.equal(logits, _load_logits(direct, ids)[1])


def test_convert_keeps_an_untied_head_and_the_biases(tmp_path, text_file):
    from tests.helpers import save_model_dir, tiny_qwen2
    from transformers import AutoModelForCausalLM

    src = save_model_dir(tiny_qwen2(), tmp_path / "qwen2")
    plain = tmp_path / "plain"
    quantize_tiny(src, text_file, plain, epochs=1, nsamples=2, head="fp32")
    converted = tmp_path / "converted"
    ptq161.convert(plain, converted)
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    before, logits = _load_logits(plain, ids)
    model, int8_logits = _load_logits(converted, ids)
    fp = AutoModelForCausalLM.from_pretrained(src)
    head = model.lm_head.dequantize()
    assert (head - fp.lm_head.weight).abs().max() < 0.01  # the untied head, not the embedding
    assert not torch.allclose(head, model.model.embed_tokens.dequantize(), atol=0.05)
    q = model.model.layers[0].self_attn.q_proj
    assert torch.equal(q.bias, before.model.layers[0].self_attn.q_proj.bias)
    assert (int8_logits - logits).abs().max() < 0.05 * logits.abs().max()  # int8 rows: close, not equal


def test_convert_refuses_what_it_cannot_convert(tiny_model_dir, text_file, tmp_path):
    import pytest

    from ptq161.cli import main
    from ptq161.errors import PTQ161Error

    packed = tmp_path / "packed"
    quantize_tiny(tiny_model_dir, text_file, packed, epochs=1, nsamples=2, head="int8")
    with pytest.raises(PTQ161Error, match="already stores"):
        ptq161.convert(packed, tmp_path / "again")
    with pytest.raises(PTQ161Error, match="not a ptq161 output"):
        ptq161.convert(tiny_model_dir, tmp_path / "x")
    assert main(["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "y"), "--int8-head"]) == 2
    assert not (tmp_path / "again").exists() and not (tmp_path / "y").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    plain = tmp_path / "plain"
    quantize_tiny(tiny_model_dir, text_file, plain, epochs=1, nsamples=2, head="fp32")
    assert main(["convert", str(plain), "-o", str(busy), "--int8-head"]) == 2
    assert sorted(p.name for p in busy.iterdir()) == ["something"]


def test_packed_outputs_store_an_int8_head_by_default_and_fp32_head_keeps_it(tiny_model_dir, text_file, tmp_path):
    """The default head format (issue 18): int8 for packed methods; ``--fp32-head`` opts out; equal decoders."""
    from ptq161.cli import main
    from ptq161.pipeline.output_dir import read_meta

    argv = _quantize_argv(tiny_model_dir, text_file)
    default, fp = tmp_path / "default", tmp_path / "fp32head"
    assert main([*argv, str(default)]) == 0 and main([*argv, str(fp), "--fp32-head"]) == 0
    assert read_meta(default)["head"] == "int8" and read_meta(fp)["head"] == "fp32"
    model, _ = ptq161.load(default)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.embed_tokens, Int8Embedding)
    model, _ = ptq161.load(fp)
    assert not isinstance(model.lm_head, Int8Linear) and not isinstance(model.model.embed_tokens, Int8Embedding)

    a, b = _tensors(default, ".layers."), _tensors(fp, ".layers.")
    assert a and set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_int4_head_quantize_and_convert_write_the_same_tensors_and_logits(tiny_model_dir, text_file, tmp_path):
    """``--head int4`` (grouped 4-bit embedding and lm_head): quantize writes it, convert from an fp32 head writes
    the same tensors, both load as int4 modules, and their logits stay close to the fp32-head model's."""
    from ptq161.cli import main
    from ptq161.nn import Int4Embedding, Int4Linear
    from ptq161.pipeline.output_dir import read_meta

    argv = _quantize_argv(tiny_model_dir, text_file)
    direct, plain = tmp_path / "int4", tmp_path / "fp32"
    assert main([*argv, str(direct), "--head", "int4"]) == 0 and main([*argv, str(plain), "--fp32-head"]) == 0
    converted = tmp_path / "converted"
    assert main(["convert", str(plain), "-o", str(converted), "--head", "int4"]) == 0
    assert read_meta(direct)["head"] == read_meta(converted)["head"] == "int4"

    want, got = _tensors(direct), _tensors(converted)
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert want["lm_head.codes"].shape == (260, 32) and want["lm_head.scale"].shape == (260, 1)  # 64 / 64 groups
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    model, logits = _load_logits(converted, ids)
    assert isinstance(model.lm_head, Int4Linear) and isinstance(model.model.embed_tokens, Int4Embedding)
    assert torch.equal(logits, _load_logits(direct, ids)[1])
    fp_logits = _load_logits(plain, ids)[1]
    # 4-bit groups of Gaussian weights: a step of ~range / 15 ~ 0.3 sigma, an RMS error of ~9 % of each weight
    rel = ((logits - fp_logits).norm() / fp_logits.norm()).item()
    assert 0.01 < rel < 0.2, rel
    with torch.no_grad():  # decode-sized calls go through the int4 kernel: the same logits as the row tiles
        step = model(ids[:, :4]).logits
    assert torch.allclose(step, logits[:, :4], atol=1e-4)
    assert dequantize_model_in_place(model) == 14 + 2
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, logits, rtol=0, atol=1e-5)
    with pytest.raises(PTQ161Error, match="already stores its embedding and lm_head in int4"):
        ptq161.convert(direct, tmp_path / "again", head="int8")
