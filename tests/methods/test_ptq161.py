import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import assert_parts_close, quantize_tiny, quantize_with, tiny_llama

from ptq161 import CalibConfig
from ptq161.calibration.capture import capture_block_inputs, run_block
from ptq161.calibration.stats import record_input_stats
from ptq161.errors import PTQ161Error
from ptq161.methods import BlockContext
from ptq161.methods import ptq161_math as pm
from ptq161.methods.ptq161 import PTQ161, LearnableBinaryLinear, PTQ161Config
from ptq161.models import get_adapter
from ptq161.pipeline.output_dir import read_parts, verify_parts
from ptq161.primitives.device import can_compile


def block_context(model, n=4, seqlen=32, seed=0):
    ad = get_adapter(model)
    ids = torch.randint(0, 260, (n, seqlen), generator=torch.Generator().manual_seed(seed))
    x, calls = capture_block_inputs(model, ad, ids)
    call = calls[0]
    block = ad.decoder_layers(model)[0]
    linears = ad.block_linears(block)
    with torch.no_grad(), record_input_stats(linears) as stats:
        y = run_block(block, x, call)
    return BlockContext(0, block, linears, x, x.clone(), y, stats, call)


def test_training_decreases_the_block_loss_and_weights_come_from_parts():
    model = tiny_llama()
    ctx = block_context(model)
    res = PTQ161(PTQ161Config(epochs=15)).quantize_block(ctx)
    assert res.log["loss_last_epoch"] < 0.9 * res.log["loss_first_epoch"]
    method = PTQ161(PTQ161Config())
    for name, parts in res.parts.items():
        assert torch.equal(ctx.linears[name].weight.detach(), method.dequantize(parts))
        assert int(parts["mask"].sum()) >= int(0.2 * ctx.linears[name].in_features) + 1  # ties join


def test_learning_beats_mask_only_on_block_output():
    errs = {}
    for epochs in (0, 15):
        model = tiny_llama()
        ctx = block_context(model)
        PTQ161(PTQ161Config(epochs=epochs)).quantize_block(ctx)
        with torch.no_grad():
            y = run_block(ctx.block, ctx.x_q, ctx.call)
        errs[epochs] = (y - ctx.y_fp).pow(2).mean().item()
    assert errs[15] < errs[0]


def test_gradients_reach_only_s_r1_r2():
    model = tiny_llama()
    ctx = block_context(model)
    method = PTQ161(PTQ161Config())
    for p in ctx.block.parameters():
        p.requires_grad_(False)
    mods = {n: method._init_layer(lin, ctx.stats[n]) for n, lin in ctx.linears.items()}
    for n, m in mods.items():
        ctx.block.set_submodule(n, m)
    y = run_block(ctx.block, ctx.x_q, ctx.call)
    ((y - ctx.y_fp) ** 2).mean().backward()
    trainable = {name for name, p in ctx.block.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in mods for k in ("s_lin", "r1", "r2")}
    for m in mods.values():
        assert isinstance(m, LearnableBinaryLinear)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (m.s_parameter(), m.r1, m.r2))
    assert all(p.grad is None for n, p in ctx.block.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("statistic", ["mean", "max"])
def test_salient_columns_are_the_high_activation_channels(statistic):
    model = tiny_llama()
    ctx = block_context(model)
    res = PTQ161(PTQ161Config(epochs=0, statistic=statistic)).quantize_block(ctx)
    stat = ctx.stats["mlp.down_proj"].get(statistic)
    mask = res.parts["mlp.down_proj"]["mask"]
    assert stat[mask].min() >= stat[~mask].max()
    other = ctx.stats["mlp.down_proj"].get("max" if statistic == "mean" else "mean")
    assert not torch.equal(mask, other >= other.topk(int(mask.sum())).values.min())  # the statistic matters here
    # q, k, v share an input and therefore a mask
    assert torch.equal(res.parts["self_attn.q_proj"]["mask"], res.parts["self_attn.v_proj"]["mask"])


@pytest.mark.parametrize(
    "bad",
    [
        dict(salient_ratio=0.0),
        dict(salient_ratio=1.0),
        dict(epochs=-1),
        dict(statistic="median"),
        dict(batch_size=0),
        dict(block_loss="huber"),
        dict(s_param="exp"),
        dict(block_schedule="step"),
        dict(block_holdout=-1),
        dict(binary_init="obq"),
    ],
)
def test_bad_settings_are_rejected(bad):
    with pytest.raises(PTQ161Error):
        PTQ161Config(**bad)


def test_quantize_api_writes_a_faithful_artifact(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "q"
    res = quantize_tiny(tiny_model_dir, text_file, out)
    meta = json.loads((out / "ptq161.json").read_text())
    assert meta["config"]["epochs"] == 2 and meta["calibration"]["seed"] == 2
    assert len(meta["block_logs"]) == 2 and not (out / ".ptq161-state").exists()
    assert verify_parts(PTQ161(PTQ161Config()), res.model, read_parts(out)) == 0.0
    with pytest.raises(PTQ161Error, match="already holds a finished result"):
        quantize_with(str(tiny_model_dir), output=out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(PTQ161Error, match="holds something else"):
        quantize_with(str(tiny_model_dir), output=other)
    with pytest.raises(PTQ161Error, match="exceeds the model's context"):
        quantize_with(str(tiny_model_dir), calib=CalibConfig(dataset=f"text:{text_file}", nsamples=1, seqlen=4096))


def _cli(*args):
    return [sys.executable, "-m", "ptq161", "quantize", *args]


@pytest.mark.slow  # a SIGKILL mid-run; tests/pipeline/test_kill_points.py covers each stage in the default run
def test_killed_run_resumes_to_identical_result(tiny_model_dir, text_file, tmp_path):
    """Kill a real quantize process after its first block, resume, compare with an uninterrupted run."""
    model_dir = tmp_path / "tiny4"
    tiny_llama(num_hidden_layers=4).save_pretrained(model_dir)
    for f in tiny_model_dir.glob("tokenizer*"):
        (model_dir / f.name).write_bytes(f.read_bytes())
    args = [
        str(model_dir),
        "--calib-dataset",
        f"text:{text_file}",
        "--calib-nsamples",
        "8",
        "--calib-seqlen",
        "64",
        "--epochs",
        "40",
        "--recipe",
        "smoke",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(_cli(*args, "--output", str(full)), check=True, capture_output=True, env=env)

    proc = subprocess.Popen(
        _cli(*args, "--output", str(part)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    progress = part / ".ptq161-state" / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and not progress.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads(progress.read_text())["progress"]["done"]
    assert 1 <= done < 4, "the kill should land mid-run"
    assert not (part / "ptq161.json").exists()
    again = subprocess.run(_cli(*args, "--output", str(part)), capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "--resume" in again.stderr
    subprocess.run(_cli(*args, "--output", str(part), "--resume"), check=True, capture_output=True, env=env)

    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("self_attn.q_proj.sign") for k in a)  # the packed format


@pytest.mark.parametrize(
    "settings",
    [
        dict(block_loss="delta"),
        dict(block_loss="normalized"),
        dict(s_param="log", lr_s=1e-2),
        dict(block_schedule="cosine"),
        dict(statistic="bound"),
        dict(binary_init="gptq"),
    ],
)
def test_block_stage_variants_train_and_store_faithful_parts(settings):
    model = tiny_llama()
    ctx = block_context(model)
    res = PTQ161(PTQ161Config(epochs=15, **settings)).quantize_block(ctx)
    assert res.log["loss_last_epoch"] < res.log["loss_first_epoch"]
    assert res.log["t1_last_epoch"] < res.log["t1_first_epoch"]  # the two terms are logged apart
    method = PTQ161(PTQ161Config())
    for name, parts in res.parts.items():
        assert torch.equal(ctx.linears[name].weight.detach(), method.dequantize(parts))


def test_log_parameterised_s_moves_by_a_share_and_stays_positive():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    sign, mu, s = pm.binary_init(w)
    expected = torch.exp(-0.1 * torch.sign(sign.sum(dim=1)))  # Adam's first step is lr * sign(grad) on theta
    for scale in (1.0, 1e-3):  # the same relative step whatever the size of the weights
        mask = torch.zeros(10, dtype=torch.bool)
        mod = LearnableBinaryLinear(mask, torch.zeros(6, 0), sign, mu, s * scale, None, log_s=True)
        opt = torch.optim.Adam([mod.s_parameter()], lr=0.1)
        mod.weight().sum().backward()
        opt.step()
        assert torch.all(mod.s > 0)
        assert torch.allclose(mod.s.detach() / (s * scale), expected, rtol=1e-4)


def test_holdout_keeps_the_epoch_with_the_lowest_held_out_loss():
    model = tiny_llama()
    ctx = block_context(model, n=6)
    res = PTQ161(PTQ161Config(epochs=5, block_holdout=2)).quantize_block(ctx)
    held = res.log["heldout_by_epoch"]
    assert len(held) == 5 and res.log["best_epoch"] == 1 + held.index(min(held))


@pytest.mark.parametrize("n_salient", [0, 3, 10])
def test_factored_forward_equals_the_formed_weight_with_the_same_gradients(n_salient):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(7, 10, generator=g)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[torch.randperm(10, generator=g)[:n_salient]] = True
    sign, mu, s = pm.binary_init(w[:, ~mask])
    mod = LearnableBinaryLinear(mask, w[:, mask], sign, mu, s, torch.randn(7, generator=g), log_s=True)
    with torch.no_grad():  # move every factor away from its initial value
        mod.theta.add_(0.3 * torch.randn(7, generator=g))
        mod.r1.mul_(1 + 0.2 * torch.randn(7, generator=g))
        mod.r2.mul_(1 + 0.2 * torch.randn(10 - n_salient, generator=g))
    x = torch.randn(2, 5, 10, generator=g, requires_grad=True)
    dy = torch.randn(2, 5, 7, generator=g)
    params = [x, mod.theta, mod.r1, mod.r2]
    y_fact = mod(x)
    grads_fact = torch.autograd.grad((y_fact * dy).sum(), params, allow_unused=True)
    y_ref = torch.nn.functional.linear(x, mod.weight(), mod.bias)
    grads_ref = torch.autograd.grad((y_ref * dy).sum(), params, allow_unused=True)
    torch.testing.assert_close(y_fact, y_ref, rtol=1e-5, atol=1e-5)
    for p, a, b in zip(params, grads_fact, grads_ref, strict=True):  # unused (all columns salient): zero
        torch.testing.assert_close(*(torch.zeros_like(p) if g is None else g for g in (a, b)), rtol=1e-4, atol=1e-5)
    assert "salient_cols" not in mod.state_dict()  # derived from the mask, not stored


def test_bfloat16_products_stay_close_to_float32_and_round_only_the_activations():
    g = torch.Generator().manual_seed(3)
    m, n, n_s = 24, 40, 8
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:n_s]] = True
    sign = torch.where(torch.rand(m, n - n_s, generator=g) > 0.5, 1.0, -1.0)
    offsets = torch.randint(-8, 8, (m, n_s), generator=g).float()
    args = dict(mu=torch.randn(m, generator=g) * 0.01, s=torch.rand(m, generator=g) + 0.5, bias=None)
    scale = torch.rand(m, generator=g) * 0.1
    f32, b16 = (
        LearnableBinaryLinear(mask, offsets, sign, salient_scale=scale, matmul_dtype=dt, **args)
        for dt in (torch.float32, torch.bfloat16)
    )
    assert torch.equal(b16.sign.float(), sign)  # +-1 is exact in bfloat16
    assert torch.equal(b16.weight(), f32.weight())
    x = torch.randn(3, 5, n, generator=g)
    # with inputs already on the bfloat16 grid, only the products' results are rounded (relative 2^-9)
    xr = x.bfloat16().float()
    y32, y16 = f32(xr), b16(xr)
    assert torch.allclose(y16, y32, rtol=2**-7, atol=1e-3 * y32.abs().max().item())
    dy = torch.randn(y32.shape, generator=g)
    g32 = torch.autograd.grad((f32(x) * dy).sum(), [f32.r1, f32.r2])
    g16 = torch.autograd.grad((b16(x) * dy).sum(), [b16.r1, b16.r2])
    for a, b in zip(g32, g16, strict=True):
        assert (a - b).norm() < 0.02 * a.norm()


def test_matmul_setting_resolves_per_device_and_is_logged():
    from ptq161.methods.ptq161 import resolve_matmul_dtype
    from ptq161.primitives.device import native_bfloat16

    cpu = torch.device("cpu")
    assert resolve_matmul_dtype("float32", cpu) == torch.float32
    assert resolve_matmul_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_matmul_dtype("auto", cpu) == (torch.bfloat16 if native_bfloat16(cpu) else torch.float32)
    assert resolve_matmul_dtype("auto", torch.device("meta")) == torch.float32
    with pytest.raises(PTQ161Error):
        PTQ161Config(train_matmul="float16")
    model = tiny_llama()
    ctx = block_context(model, n=2)
    res = PTQ161(PTQ161Config(epochs=1, train_matmul="bfloat16")).quantize_block(ctx)
    assert res.log["matmul_dtype"] == "bfloat16"


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="no C++ compiler")
@pytest.mark.parametrize("method", ["ptq161", "omniquant"])
def test_compiled_block_training_equals_eager_and_compiles_once_for_all_blocks(tiny_model_dir, text_file, method):
    """--train-compile: the same parts as eager training within float rounding, and one graph for every block."""
    from torch._dynamo.utils import counters

    from ptq161.methods.omniquant import OmniQuantConfig

    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=4, seqlen=32)
    make = PTQ161Config if method == "ptq161" else OmniQuantConfig
    eager = quantize_with(str(tiny_model_dir), method, method_config=make(epochs=2), calib=calib, progress=False)
    torch._dynamo.reset()
    counters.clear()
    comp = quantize_with(
        str(tiny_model_dir), method, method_config=make(epochs=2, train_compile="on"), calib=calib, progress=False
    )
    assert counters["stats"]["unique_graphs"] == 1  # both blocks, all steps: one compiled graph
    assert_parts_close(comp.parts, eager.parts)
    for a, b in zip(eager.meta["block_logs"], comp.meta["block_logs"], strict=True):
        assert a["loss_last_epoch"] == pytest.approx(b["loss_last_epoch"], rel=1e-4)


def test_a_failing_first_compiled_call_is_a_one_line_error_naming_the_flag():
    from ptq161.methods.block_training import checked_compile

    def broken(x: torch.Tensor) -> torch.Tensor:
        return x @ torch.ones(3, 2)  # [2, 2] @ [3, 2]: fails while tracing

    with pytest.raises(PTQ161Error, match=r"^--some-flag: torch.compile failed on this machine \(") as info:
        checked_compile(broken, "--some-flag")(torch.ones(2, 2))
    assert "\n" not in str(info.value)


def test_compile_auto_follows_the_compiler_and_bad_settings_are_errors(monkeypatch, tmp_path):
    from ptq161.methods.block_training import resolve_compile
    from ptq161.pipeline.e2e import E2EConfig

    cpu = torch.device("cpu")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on the PATH
    assert [resolve_compile(s, cpu) for s in ("auto", "on", "off")] == [False, True, False]
    (tmp_path / "g++").write_text("#!/bin/sh\n")
    (tmp_path / "g++").chmod(0o755)
    assert resolve_compile("auto", cpu) and not resolve_compile("auto", torch.device("meta"))
    for make, field in ((PTQ161Config, "train_compile"), (E2EConfig, "compile")):
        with pytest.raises(PTQ161Error, match="compile must be off, auto or on"):
            make(**{field: True})


def test_training_adamw_is_fused_on_cpu_and_equals_the_per_tensor_loop():
    from ptq161.methods.block_training import adamw

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(n, generator=gen) for n in (576, 192, 1536, 7)]
    grads = [[torch.randn(t.shape, generator=gen) for t in start] for _ in range(10)]

    def run(make):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make([{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 1e-3}])
        for g in grads:
            for p, gp in zip(ps, g, strict=True):
                p.grad = gp.clone()
            opt.step()
        return opt, ps

    fused, a = run(adamw)
    _, b = run(lambda groups: torch.optim.AdamW(groups, weight_decay=0.0, foreach=False))
    assert fused.defaults["fused"] is True
    for p, q in zip(a, b, strict=True):
        assert not torch.equal(p, torch.zeros_like(p))
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
