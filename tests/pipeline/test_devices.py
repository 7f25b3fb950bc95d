"""Device and dtype paths: every path runs on cpu in float32 and bfloat16, and the same tests on cuda
(skipped where no GPU exists). A flag a command accepts must change what it does."""

import pytest
import torch
from tests.helpers import quantize_tiny, quantize_with

import ptq161
from ptq161 import CalibConfig, Recipe
from ptq161.methods.rtn import RTNConfig
from ptq161.nn import Int8Embedding, Int8Linear, PackedPTQ161Linear
from ptq161.pipeline.convert import dequantize_model_in_place
from ptq161.pipeline.preprocess import LoRAConfig, preprocess

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_int8_modules_run_on_the_device(device):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=g)
    lin, emb = Int8Linear.from_weight(w).to(device), Int8Embedding.from_weight(w).to(device)
    for tokens in (1, 20):  # the kernel path (CPU, few tokens) and the row-tile path
        x = torch.randn(tokens, 32, generator=g).to(device)
        with torch.no_grad():
            assert _rel(lin(x), x @ lin.dequantize().T) < 1e-5
    ids = torch.tensor([[0, 5, 47]], device=device)
    assert torch.equal(emb(ids), emb.dequantize()[ids])


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_model_loads_and_evaluates_in_any_dtype(tiny_model_dir, text_file, tmp_path, device, dtype):
    out = tmp_path / "packed"
    res = quantize_tiny(tiny_model_dir, text_file, out, epochs=1, head="int8")
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = res.model(ids).logits
    model, _ = ptq161.load(out, device=device, dtype=dtype)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, PackedPTQ161Linear) and layer.a.dtype == torch.float16  # stored factors stay fp16
    assert layer.bin_idx.device.type == torch.device(device).type
    with torch.no_grad():
        packed = model(ids.to(device)).logits
        assert packed.dtype == dtype
        assert dequantize_model_in_place(model) > 0  # what `ptq161 eval` does
        assert model.model.layers[0].mlp.down_proj.weight.dtype == dtype
        assert model.lm_head.weight.device.type == torch.device(device).type
        dense = model(ids.to(device)).logits
    tol = 1e-5 if dtype == torch.float32 else 0.05
    assert _rel(packed.cpu(), ref) < tol and _rel(dense.cpu(), ref) < tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["ptq161", "rtn"])
def test_quantize_honours_device_and_dtype(tiny_model_dir, text_file, tmp_path, device, dtype, method):
    cfg = RTNConfig(bits=3) if method == "rtn" else None
    out = tmp_path / f"{method}-{dtype}"
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=64)
    kw = dict(method_config=cfg, calib=calib, output=out, progress=False, device=device, head="fp32")
    res = quantize_with(str(tiny_model_dir), method, dtype=dtype, **kw)
    params = list(res.model.parameters()) + list(res.model.buffers())
    assert {p.device.type for p in params} == {torch.device(device).type}  # packed modules moved too
    assert res.model.model.embed_tokens.weight.dtype == dtype
    assert res.meta["dtype"] == str(dtype).removeprefix("torch.") and res.meta["device"] == device
    ref = quantize_with(str(tiny_model_dir), method, **{**kw, "output": tmp_path / "fp32", "device": "cpu"})
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = res.model(ids.to(device)).logits.cpu(), ref.model(ids).logits
    assert got.dtype == dtype
    # bfloat16 calibration streams round the inputs of every block: close to, not equal to, fp32
    assert _rel(got, want) < (1e-5 if dtype == torch.float32 and device == "cpu" else 0.1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_preprocess_honours_device_and_dtype(tiny_model_dir, text_file, tmp_path, device, dtype):
    lora = LoRAConfig(steps=2, batch_size=1, seqlen=32, rank=4, alpha=4, data=f"text:{text_file}", warmup=0)
    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=2, seqlen=32)
    res = preprocess(
        str(tiny_model_dir),
        tmp_path / "pre",
        recipe=Recipe("rtn", RTNConfig(bits=4), calib),
        lora=lora,
        progress=False,
        device=device,
        dtype=dtype,
    )
    assert res.model.model.embed_tokens.weight.dtype == dtype
    assert res.model.lm_head.weight.device.type == torch.device(device).type
    assert res.meta["dtype"] == str(dtype).removeprefix("torch.")


def test_streams_on_the_cpu_give_the_same_parts_as_streams_on_the_device(tiny_model_dir, text_file, device):
    """What the driver does when a GPU is too small for the calibration streams (on cpu: the same code path)."""
    from ptq161.data import calibration_windows
    from ptq161.methods.ptq161 import PTQ161, PTQ161Config
    from ptq161.models import get_adapter, load_model
    from ptq161.pipeline.driver import quantize_blockwise, streams_bytes, streams_placement

    assert streams_bytes(128, 2048, 4096, torch.float32) == 16 * 2**30  # the paper preset on LLaMA-7B
    assert streams_placement("cpu", 10**15) == torch.device("cpu")
    results = []
    for streams in (None, "cpu"):
        model, tok = load_model(str(tiny_model_dir), device=device)
        windows, _ = calibration_windows(f"text:{text_file}", tok, nsamples=4, seqlen=64, seed=0)
        res = quantize_blockwise(
            model, get_adapter(model), windows, PTQ161(PTQ161Config(epochs=1)), progress=False, streams_device=streams
        )
        results.append(res.parts)
    for name, parts in results[0].items():
        for k, v in parts.items():
            assert torch.allclose(results[1][name][k].float().cpu(), v.float().cpu(), atol=1e-3), (name, k)
