"""Block onloading: a model over the memory budget is quantized and evaluated one decoder block at a time,
with the same results as the whole model in memory."""

import json
from pathlib import Path

import pytest
import torch
from tests.helpers import quantize_with, save_model_dir, tiny_llama, tiny_qwen2

import ptq161
from ptq161 import CalibConfig
from ptq161.errors import PTQ161Error
from ptq161.eval.perplexity import perplexity
from ptq161.methods import METHODS
from ptq161.models import LazyModel, load_model_lazy, onloads, parse_memory
from ptq161.pipeline.e2e import E2EConfig
from ptq161.pipeline.output_dir import file_bits_per_weight, read_meta, read_parts

TINY_BUDGET = 1000  # bytes: every model is "larger than RAM"


@pytest.fixture(params=["llama", "qwen2"])
def model_dir(request, tmp_path: Path) -> Path:
    return save_model_dir(tiny_qwen2() if request.param == "qwen2" else tiny_llama(), tmp_path / request.param)


def test_memory_sizes_parse_and_the_budget_decides(model_dir):
    assert parse_memory("3GB") == 3 * 2**30 and parse_memory("512MiB") == 512 * 2**20 and parse_memory("1e6") == 10**6
    with pytest.raises(PTQ161Error, match="memory size"):
        parse_memory("lots")
    assert onloads(str(model_dir), torch.float32, TINY_BUDGET)
    assert not onloads(str(model_dir), torch.float32, 10**9)


def test_evaluation_counts_loading_twice_and_one_windows_working_memory(model_dir, monkeypatch):
    """The rule behind a real case: the int8-head 1.5B model (714 MiB of weights) was evaluated whole under
    --max-memory 3GB by the half-budget rule and peaked at 3.95 GB."""

    import ptq161.models.lazy as lazy_mod
    from ptq161.models.lazy import model_bytes, window_bytes

    cfg = json.loads((model_dir / "config.json").read_text())
    h, i, heads, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    assert window_bytes(model_dir, 64) == 8 * (64 * (4 * h + 3 * i) + heads * 64 * 64 + 64 * v)
    monkeypatch.setattr(lazy_mod, "current_rss_bytes", lambda: 10**6)
    need = 10**6 + 2 * model_bytes(model_dir, torch.float32) + window_bytes(model_dir, 64)
    assert not onloads(str(model_dir), torch.float32, need, seqlen=64)
    assert onloads(str(model_dir), torch.float32, need - 1, seqlen=64)
    assert not onloads(str(model_dir), torch.float32, need - 1)  # quantization: the half-budget rule
    big = {"hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12, "vocab_size": 151936}
    (model_dir / "config.json").write_text(json.dumps(big))
    assert window_bytes(model_dir, 2048) == 8 * (2048 * (4 * 1536 + 3 * 8960) + 12 * 2048**2 + 256 * 151936)


def test_blockwise_perplexity_equals_the_whole_model(model_dir):
    model, _ = ptq161.load(model_dir)
    lazy, _ = load_model_lazy(str(model_dir))
    layer = lazy.adapter.decoder_layers(lazy.model)[1]
    assert layer.mlp.up_proj.weight.device.type == "meta"  # nothing of the decoder is loaded up front
    tokens = torch.randint(0, 256, (1, 64 * 10), generator=torch.Generator().manual_seed(0))
    whole = perplexity(model, tokens, seqlen=64, progress=False)
    blocks = perplexity(lazy, tokens, seqlen=64, progress=False)
    assert whole.windows == blocks.windows == 10
    assert max(abs(a - b) for a, b in zip(whole.window_nll, blocks.window_nll, strict=True)) < 1e-5
    assert layer.mlp.up_proj.weight.device.type == "meta"  # released again


def _onloading_cases() -> list:
    """(family, method, head): every method on LLaMA, PTQ1.61's head formats on both families in the default
    run; the other methods on Qwen2 (biases: every method is checked on Qwen2 in memory, tests/pipeline/
    test_qwen2.py) slow-marked."""
    cases = [pytest.param("llama", m, "fp32") for m in sorted(METHODS)]
    cases += [pytest.param(f, "ptq161", h) for f in ("llama", "qwen2") for h in ("int8", "int4")]
    cases.append(pytest.param("qwen2", "ptq161", "fp32"))
    cases += [pytest.param("llama_tied", "ptq161", h) for h in ("int8", "int4")]  # a compact head stored once
    cases.append(pytest.param("llama", "ptq161", "int8-tied"))  # the lm_head's table as the embedding's
    cases += [pytest.param("qwen2", m, "fp32", marks=pytest.mark.slow) for m in sorted(METHODS) if m != "ptq161"]
    return cases


@pytest.mark.parametrize(("family", "method", "head"), _onloading_cases())
def test_onloaded_quantization_equals_the_in_memory_one(family, method, head, text_file, tmp_path):
    fp = tiny_qwen2() if family == "qwen2" else tiny_llama(tie_word_embeddings=family == "llama_tied")
    model_dir = save_model_dir(fp, tmp_path / family)
    cfg = METHODS[method].config_class()
    if method == "ptq161":
        cfg = type(cfg)(epochs=1)
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=64)
    kw = dict(method_config=cfg, calib=calib, progress=False, head=head)
    whole = quantize_with(str(model_dir), method, output=tmp_path / "whole", **kw)
    lazy = quantize_with(str(model_dir), method, output=tmp_path / "lazy", max_memory=TINY_BUDGET, **kw)
    assert read_meta(tmp_path / "lazy")["block_onloading"] and not read_meta(tmp_path / "whole")["block_onloading"]
    for name, parts in whole.parts.items():
        for k, v in parts.items():
            assert torch.equal(lazy.parts[name][k], v), (name, k)
    assert isinstance(lazy.model, LazyModel)  # the output directory, onloaded
    stored = read_parts(tmp_path / "lazy")  # from the shards (packed) or the parts file (dense)
    assert all(torch.equal(stored[n][k], v) for n, p in lazy.parts.items() for k, v in p.items() if k in stored[n])
    if METHODS[method](cfg).packs:
        layers = read_meta(tmp_path / "lazy")["bits"]["layers"]
        assert file_bits_per_weight(tmp_path / "lazy", layers) == file_bits_per_weight(tmp_path / "whole", layers)
    if family == "llama_tied" or head.endswith("-tied"):  # the head reads the embedding's tensors, stored once
        for out in ("whole", "lazy"):
            config = json.loads((tmp_path / out / "config.json").read_text())
            assert config["quantization_config"]["tied_modules"] == {"lm_head": "model.embed_tokens"}
            assert not any(k.startswith("lm_head.") for k in _stored_names(tmp_path / out))
    loaded, _ = ptq161.load(tmp_path / "lazy")  # sharded, packed or dense: transformers loads it whole too
    ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, whole.model(ids).logits, atol=1e-5)
    tokens = torch.randint(0, 256, (1, 64 * 4), generator=torch.Generator().manual_seed(1))
    a = perplexity(lazy.model, tokens, seqlen=64, progress=False).ppl
    assert a == pytest.approx(perplexity(whole.model, tokens, seqlen=64, progress=False).ppl, rel=1e-5)


def test_onloading_refuses_what_needs_the_whole_model(model_dir, text_file, tmp_path):
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64)
    with pytest.raises(PTQ161Error, match=r"^the model does not fit the memory budget .* larger --max-memory"):
        quantize_with(
            str(model_dir), calib=calib, output=tmp_path / "o", max_memory=TINY_BUDGET, e2e=E2EConfig(steps=2)
        )
    with pytest.raises(PTQ161Error, match="give an output directory"):
        quantize_with(str(model_dir), calib=calib, max_memory=TINY_BUDGET, progress=False)


def test_cli_onloads_over_the_budget_and_drops_the_recipe_end_to_end_stage(
    model_dir, text_file, tmp_path, capsys, caplog
):
    from ptq161.cli import main

    out = tmp_path / "cli"
    args = [
        "quantize",
        str(model_dir),
        "--output",
        str(out),
        "--calib-nsamples",
        "4",
        "--epochs",
        "1",
        "--max-memory",
        "1KB",
    ]
    assert main([*args, "--calib-dataset", f"text:{text_file}", "--calib-seqlen", "64"]) == 0  # the cpu recipe: e2e
    assert "block onloading, without the recipe's end-to-end stage" in caplog.text
    meta = read_meta(out)
    assert meta["block_onloading"] and "e2e" not in meta and meta["recipe"]["e2e"]["steps"] == 0
    assert "End-to-end stage dropped" in meta["recipe"]["description"]
    ppl = ["ppl", str(model_dir), "--datasets", f"text:{text_file}", "--seqlen", "64"]
    assert main([*ppl, "--max-memory", "1KB"]) == 0
    assert "block by block" in capsys.readouterr().out


def test_whole_model_commands_refuse_a_model_over_the_ram_before_loading(model_dir, monkeypatch):
    import ptq161.models.loading as loading

    monkeypatch.setattr(loading, "available_memory", lambda: 1000)
    with pytest.raises(PTQ161Error, match="onload it block by block"):
        loading.load_model(str(model_dir))


def _stored_names(path) -> set[str]:
    """The tensor names in the safetensors files of directory ``path``."""
    from safetensors import safe_open

    names: set[str] = set()
    for f in path.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    return names
