import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import ptq161
from ptq161 import CalibConfig, quantize
from ptq161.errors import PTQ161Error
from ptq161.methods.ptq161 import PTQ161, PTQ161Config
from ptq161.models.adapters import LLAMA_LIKE
from ptq161.nn.packed import LUT_MAX_TOKENS, PackedPTQ161Linear
from ptq161.packing.bits import pack_bits, pack_nibbles


def random_parts(m: int, n: int, n_sal: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:n_sal]] = True
    n_b = n - n_sal
    return {
        "mask": mask,
        "sign": pack_bits(torch.rand(m, n_b, generator=g) > 0.5),
        "codes": pack_nibbles(torch.randint(0, 16, (m, n_sal), dtype=torch.uint8, generator=g)),
        "scale": (torch.rand(m, generator=g) * 0.01 + 1e-3).half(),
        "zero": torch.randint(0, 16, (m,), dtype=torch.uint8, generator=g),
        "a": (torch.rand(m, generator=g) * 0.02).half(),
        "b": (torch.randn(m, generator=g) * 0.001).half(),
        "r2": (torch.rand(n_b, generator=g) + 0.5).half(),
    }


@pytest.mark.parametrize("m,n,n_sal", [(7, 13, 3), (33, 64, 13), (65, 100, 21), (16, 9, 0), (48, 96, 95)])
@pytest.mark.parametrize("tokens", [1, 3, LUT_MAX_TOKENS + 5])
def test_kernel_matches_reference_matmul(m, n, n_sal, tokens):
    parts = random_parts(m, n, n_sal)
    w = PTQ161(PTQ161Config()).dequantize(parts)
    mod = PackedPTQ161Linear.from_parts(parts)
    assert torch.equal(mod.dequantize(), w)  # unpacking reproduces the quantizer's weight bit for bit
    assert torch.equal(mod.dense_rows(slice(None)), w)  # the numba row kernel (prefill path) too
    assert torch.equal(mod.dense_rows(slice(1, m - 1)), w[1 : m - 1])
    x = torch.randn(2, tokens, n, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = mod(x)
    ref = x @ w.T
    assert got.shape == (2, tokens, m)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_chunks", [1, 2, 3, 5])
def test_kernel_row_chunks_cover_every_row_once(n_chunks):
    """Each thread's chunk builds its own tables: any chunk count gives the reference product."""
    import numpy as np

    from ptq161.packing.kernels import packed_matvec

    parts = random_parts(65, 100, 21, seed=3)
    mod = PackedPTQ161Linear.from_parts(parts)
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    out = np.full((3, 65), np.nan, dtype=np.float32)
    packed_matvec(x.numpy(), mod.kernel_buffers(), out, n_chunks)
    assert torch.allclose(torch.from_numpy(out), x @ mod.dequantize().T, atol=1e-5, rtol=1e-5)


def test_packed_storage_is_about_1_6_bits_at_paper_width():
    n = 4096
    n_sal = int(0.2 * n) + 1
    mod = PackedPTQ161Linear.from_parts(random_parts(n, n, n_sal))
    stored_bits = 8 * sum(t.numel() * t.element_size() for t in mod.buffers())
    n_b = n - n_sal
    # signs, codes (whole bytes per row), fp16 scale + uint8 zero + fp16 a, b per row, fp16 r2, int16 indices
    hand = n * 8 * -(-n_b // 8) + n * 8 * -(-n_sal // 2) + n * (16 + 8 + 32) + 16 * n_b + 16 * n
    assert stored_bits == hand
    assert stored_bits / (n * n) <= 1.63


@pytest.fixture
def packed_dir(tiny_model_dir, text_file, tmp_path) -> tuple[Path, torch.nn.Module]:
    out = tmp_path / "packed"
    res = quantize(
        str(tiny_model_dir),
        method_config=PTQ161Config(epochs=2),
        calib=CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=64),
        output=out,
        progress=False,
    )
    return out, res.model


def test_save_load_same_outputs_through_ptq161_and_transformers(packed_dir):
    out, quantized = packed_dir
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "ptq161" and cfg["format_version"] == 1 and len(cfg["layers"]) == 14
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    model, _ = ptq161.load(out)
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(hf.model.layers[0].mlp.down_proj, PackedPTQ161Linear)
    with torch.no_grad():
        ref = quantized(ids).logits
        assert torch.equal(model(ids).logits, ref)
        assert torch.equal(hf(ids).logits, ref)
        short = model(ids[:, :4]).logits  # decode-sized call: table-lookup kernel
    assert torch.allclose(short, ref[:, :4], atol=1e-4)


def test_corrupted_or_mismatched_artifacts_fail_clearly(packed_dir, tmp_path):
    out, _ = packed_dir
    import shutil

    trunc = tmp_path / "trunc"
    shutil.copytree(out, trunc)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PTQ161Error, match="cannot load"):
        ptq161.load(trunc)

    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    cfg = json.loads((wrong / "config.json").read_text())
    cfg["quantization_config"]["format_version"] = 99
    (wrong / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PTQ161Error, match="format version 99"):
        ptq161.load(wrong)

    missing = tmp_path / "missing"
    shutil.copytree(out, missing)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(missing / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.sign"]
    save_file(tensors, str(missing / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PTQ161Error, match="missing 1 tensors"):
        ptq161.load(missing)


def test_int8_head_roundtrip_and_error_bound(tiny_model_dir, text_file, tmp_path):
    from ptq161.nn.int8 import Int8Embedding, Int8Linear, quantize_int8_rows

    w = torch.randn(37, 19, generator=torch.Generator().manual_seed(0))
    q, s = quantize_int8_rows(w)
    assert torch.all((q.float() * s.float()[:, None] - w).abs() <= s.float()[:, None] / 2 + 1e-6)
    lin = Int8Linear.from_weight(w)
    x = torch.randn(2, 3, 19)
    with torch.no_grad():
        assert torch.allclose(lin(x), x @ lin.dequantize().T, atol=1e-5)  # lookup path
        x2 = torch.randn(1, 20, 19)  # more tokens than the lookup path takes: row tiles
        assert torch.allclose(lin(x2), x2 @ lin.dequantize().T, atol=1e-5)

    out = tmp_path / "int8"
    res = quantize(
        str(tiny_model_dir),
        method_config=PTQ161Config(epochs=1),
        calib=CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=64),
        output=out,
        progress=False,
        int8_head=True,
    )
    model, _ = ptq161.load(out)
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.model.embed_tokens, Int8Embedding)
    ids = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, res.model(ids).logits)
        packed_logits = model(ids).logits
    # dequantized for fast scoring: plain modules, the same logits
    from ptq161.packing.artifact import dequantize_model_in_place

    assert dequantize_model_in_place(model) == 14 + 2
    assert not any(isinstance(m, Int8Linear | Int8Embedding | PackedPTQ161Linear) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, packed_logits, rtol=0, atol=1e-5)


def test_fresh_process_loads_packed_dir(packed_dir):
    """The packing helpers are first imported inside transformers' empty-weights context here."""
    import subprocess
    import sys

    out, _ = packed_dir
    code = f"import ptq161, torch; m, _ = ptq161.load({str(out)!r}); print(m(torch.tensor([[1, 2, 3]])).logits.shape)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "torch.Size([1, 3, 260])" in p.stdout


def random_packed_llama(seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny LLaMA whose decoder linears are random packed PTQ1.61 layers (no quantization run)."""
    from tests.conftest import tiny_llama

    model = tiny_llama(seed, **overrides)
    k = 0
    for layer in model.model.layers:
        for name in LLAMA_LIKE.linear_names:
            parent, attr = name.split(".")
            lin = layer.get_submodule(name)
            n = lin.in_features
            parts = random_parts(lin.out_features, n, n // 5, seed=k)
            parts["a"] = (parts["a"].float() * 20).half()  # weights of the size of the dense init
            setattr(layer.get_submodule(parent), attr, PackedPTQ161Linear.from_parts(parts))
            k += 1
    return model


@pytest.mark.parametrize(
    "overrides", [{}, {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, {"num_key_value_heads": 4}]
)
def test_decode_engine_matches_the_model_forward(overrides):
    from transformers import DynamicCache

    from ptq161.nn.engine import DecodeEngine

    model = random_packed_llama(**overrides)
    assert DecodeEngine.unsupported_reason(model) is None
    eng = DecodeEngine(model, max_len=64)
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(2))
    cache = DynamicCache()
    with torch.no_grad():
        ref = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[0, -1]
        assert torch.equal(eng.prefill(ids), ref)  # the prompt goes through the model itself
        token, pos = int(ref.argmax()), ids.shape[1]
        for _ in range(6):  # each step: the model's own forward with its cache vs the engine
            want = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits[0, -1]
            got = eng.step(token, pos)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
            token, pos = int(want.argmax()), pos + 1
    tokens, _, _ = eng.generate(ids, 6)
    from ptq161.eval.speed import greedy_generate

    assert tokens == greedy_generate(model, ids, 6)[0]


def test_decode_engine_refuses_what_it_does_not_run():
    from tests.conftest import tiny_llama

    from ptq161.nn.engine import DecodeEngine

    reason = DecodeEngine.unsupported_reason(tiny_llama())
    assert "not a packed PTQ1.61 linear" in reason
    with pytest.raises(ValueError, match="does not serve"):
        DecodeEngine(tiny_llama())
    eng = DecodeEngine(random_packed_llama(), max_len=8)
    with pytest.raises(ValueError, match="max_len"):
        eng.generate(torch.zeros(1, 8, dtype=torch.long), 2)
