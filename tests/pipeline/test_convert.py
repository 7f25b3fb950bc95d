import pytest
import torch
from tests.helpers import quantize_tiny, save_model_dir, tiny_llama

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


@pytest.mark.parametrize("head", ["int8", "int4"])
def test_a_tied_compact_head_is_the_embeddings_tensors_stored_once(head, text_file, tmp_path):
    """A tied model's compact lm_head reads the compact embedding's tensors: none stored under lm_head, one
    copy in memory after every way of loading (and after a dtype cast), the same logits as the in-process
    result; convert from an fp32 head writes the same tensors as quantize."""
    from transformers import AutoModelForCausalLM

    src = save_model_dir(tiny_llama(tie_word_embeddings=True), tmp_path / "tied")
    direct, plain, converted = tmp_path / "direct", tmp_path / "plain", tmp_path / "converted"
    res = quantize_tiny(src, text_file, direct, epochs=1, nsamples=2, head=head)
    quantize_tiny(src, text_file, plain, epochs=1, nsamples=2, head="fp32")
    ptq161.convert(plain, converted, head=head)
    want, got = _tensors(direct), _tensors(converted)
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert not any(k.startswith("lm_head.") for k in want) and any(k.startswith("model.embed_tokens.") for k in want)

    def shared(model) -> bool:
        emb, lm = model.model.embed_tokens, model.lm_head
        return all(getattr(lm, n).data_ptr() == getattr(emb, n).data_ptr() for n in lm.STORED)

    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = res.model(ids).logits
    assert shared(res.model)
    for path in (direct, converted):
        model, logits = _load_logits(path, ids)
        assert shared(model) and torch.equal(logits, expected)
    hf = AutoModelForCausalLM.from_pretrained(direct)
    with torch.no_grad():
        assert shared(hf) and torch.equal(hf(ids).logits, expected)
    hf.to(torch.bfloat16)  # a dtype cast keeps the stored dtypes and the one copy
    assert shared(hf) and hf.lm_head.scale.dtype == torch.float16
    fp_logits = _load_logits(plain, ids)[1]
    rel = ((expected - fp_logits).norm() / fp_logits.norm()).item()
    assert rel < (0.02 if head == "int8" else 0.2), rel


def test_convert_stores_a_head_written_twice_once(text_file, tmp_path):
    """A packed directory whose compact lm_head holds the embedding's very tensors (what a tied model's
    head was before it was stored once) converts to the same format with the head stored once; a
    head of its own is refused."""
    fp = tiny_llama()
    with torch.no_grad():
        fp.lm_head.weight.copy_(fp.model.embed_tokens.weight)  # equal tables, not tied by the config
    twice, once = tmp_path / "twice", tmp_path / "once"
    res = quantize_tiny(save_model_dir(fp, tmp_path / "src"), text_file, twice, epochs=1, nsamples=2, head="int8")
    before = _tensors(twice)
    assert torch.equal(before["lm_head.weight_int8"], before["model.embed_tokens.weight_int8"])
    meta = ptq161.convert(twice, once, head="int8")
    after = _tensors(once)
    assert meta["head"] == "int8" and set(after) == {k for k in before if not k.startswith("lm_head.")}
    assert all(torch.equal(after[k], before[k]) for k in after)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    model, logits = _load_logits(once, ids)
    assert model.lm_head.weight_int8.data_ptr() == model.model.embed_tokens.weight_int8.data_ptr()
    with torch.no_grad():
        assert torch.equal(logits, res.model(ids).logits)
    own = tmp_path / "own"
    quantize_tiny(save_model_dir(tiny_llama(), tmp_path / "src2"), text_file, own, epochs=1, nsamples=2, head="int8")
    with pytest.raises(PTQ161Error, match="already stores its embedding and lm_head in int8"):
        ptq161.convert(own, tmp_path / "again", head="int8")


def test_a_tied_format_makes_the_lm_heads_table_the_embeddings(text_file, tmp_path):
    """``int8-tied`` on an untied model: the embedding is the lm_head's int8 table (stored once, read by both);
    quantize, convert from an fp32 head and convert from an int8 head write the same tensors."""
    from ptq161.nn.int8 import quantize_int8_rows

    fp = tiny_llama()
    src = save_model_dir(fp, tmp_path / "src")
    direct, plain, int8 = tmp_path / "direct", tmp_path / "plain", tmp_path / "int8"
    res = quantize_tiny(src, text_file, direct, epochs=1, nsamples=2, head="int8-tied")
    quantize_tiny(src, text_file, plain, epochs=1, nsamples=2, head="fp32")
    quantize_tiny(src, text_file, int8, epochs=1, nsamples=2, head="int8")
    want = _tensors(direct)
    q, scale = quantize_int8_rows(fp.lm_head.weight.detach())
    assert torch.equal(want["model.embed_tokens.weight_int8"], q) and torch.equal(
        want["model.embed_tokens.scale"], scale
    )
    assert not any(k.startswith("lm_head.") for k in want)
    for source in (plain, int8):
        out = tmp_path / f"from-{source.name}"
        assert ptq161.convert(source, out, head="int8-tied")["head"] == "int8-tied"
        got = _tensors(out)
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    model, logits = _load_logits(direct, ids)
    assert model.lm_head.weight_int8.data_ptr() == model.model.embed_tokens.weight_int8.data_ptr()
    with torch.no_grad():
        assert torch.equal(logits, res.model(ids).logits)
        assert torch.equal(model.model.embed_tokens(ids)[0], model.lm_head.dequantize()[ids[0]])
    with pytest.raises(PTQ161Error, match="already stores its embedding and lm_head in int8-tied"):
        ptq161.convert(direct, tmp_path / "again", head="int8-tied")
