import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import assert_parts_close, quantize_with, random_parts, save_model_dir, tiny_llama, tiny_qwen2

import ptq161.pipeline.e2e as e2e
from ptq161 import CalibConfig
from ptq161.errors import PTQ161Error
from ptq161.methods.ptq161 import PTQ161, FoldedBinaryLinear, PTQ161Config
from ptq161.pipeline.e2e import E2EConfig, topk_kl
from ptq161.pipeline.output_dir import read_meta, read_parts
from ptq161.primitives.device import can_compile
from ptq161.primitives.quant import assemble, binary_dequantize, rtn_dequantize


def test_folded_module_starts_at_the_stored_weight_and_stores_the_same_bits():
    parts = random_parts(9, 20, 5)
    mod = FoldedBinaryLinear(parts, None)
    assert torch.equal(mod.weight().detach(), PTQ161(PTQ161Config()).dequantize(parts))
    again = mod.parts()
    assert again.keys() == parts.keys()
    for k, v in parts.items():
        assert again[k].dtype == v.dtype and again[k].shape == v.shape
        assert torch.equal(again[k], v), k


def test_topk_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
    logits = torch.randn(5, 30, generator=torch.Generator().manual_seed(0))
    top = torch.topk(logits, 30, dim=-1)
    assert topk_kl(logits, top.values, top.indices).abs() < 1e-6
    assert topk_kl(logits.flip(-1), top.values, top.indices) > 0.1


def test_topk_kl_closed_form_gradient_equals_autograd_through_log_softmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 50, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(7, 50, generator=g) * 3
    top = torch.topk(teacher, 6, dim=-1)
    mine = logits.float().clone().requires_grad_(True)
    loss = topk_kl(mine, top.values, top.indices)
    loss.backward()
    ref = logits.clone().requires_grad_(True)  # the textbook formula, autograd, float64
    p_log = torch.log_softmax(top.values.double(), dim=-1)
    q_log = torch.log_softmax(ref, dim=-1).gather(-1, top.indices)
    ref_loss = (p_log.exp() * (p_log - q_log)).sum(-1).mean()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * max(1.0, ref_loss.item())
    torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=1e-5, atol=1e-7)
    assert abs(mine.grad.sum().item()) < 1e-6  # softmax minus a distribution: each row sums to 0


def _tail_case(seed: int = 3, k: int = 6):
    """Student logits float64 [7, 50], teacher top-k (values, indices) and the teacher's tail logsumexp [7, 1]."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(7, 50, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(7, 50, generator=g) * 3
    top = torch.topk(teacher, k, dim=-1)
    return logits, teacher, top, e2e.rest_logsumexp(teacher, top.indices)


def test_tail_kl_is_zero_for_the_teacher_and_the_full_kl_when_the_tail_is_one_token():
    _, teacher, top, rest = _tail_case()
    assert topk_kl(teacher, top.values, top.indices, rest).abs() < 1e-6
    # with k = V - 1 the tail bucket is the one remaining token: the KL over the whole vocabulary
    logits, teacher, top, rest = _tail_case(k=49)
    full = (
        (
            torch.softmax(teacher.double(), -1)
            * (torch.log_softmax(teacher.double(), -1) - torch.log_softmax(logits, -1))
        )
        .sum(-1)
        .mean()
    )
    assert abs(topk_kl(logits.float(), top.values, top.indices, rest).item() - full.item()) < 1e-5 * full.item()
    # the tail bucket can only add information: it never lowers the KL below the renormalised top-k one's floor 0,
    # and a student that drops the tail (all mass on the top k) is penalised by it, not by the top-k KL
    _, teacher, top, rest = _tail_case(k=6)
    sharp = torch.full_like(teacher, -30.0).scatter(-1, top.indices, top.values)
    assert topk_kl(sharp, top.values, top.indices) < 1e-6
    assert topk_kl(sharp, top.values, top.indices, rest) > 0.1


def test_tail_kl_closed_form_gradient_equals_autograd():
    logits, _teacher, top, rest = _tail_case()
    mine = logits.float().clone().requires_grad_(True)
    loss = topk_kl(mine, top.values, top.indices, rest)
    loss.backward()
    ref = logits.clone().requires_grad_(True)  # the textbook formula over k + 1 categories, autograd, float64
    p_log = torch.log_softmax(torch.cat([top.values.double(), rest.double()], -1), dim=-1)
    q_all = torch.log_softmax(ref, dim=-1)
    q_rest = q_all.scatter(-1, top.indices, float("-inf")).logsumexp(-1, keepdim=True)
    q_log = torch.cat([q_all.gather(-1, top.indices), q_rest], -1)
    ref_loss = (p_log.exp() * (p_log - q_log)).sum(-1).mean()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * max(1.0, ref_loss.item())
    torch.testing.assert_close(mine.grad.double(), ref.grad, rtol=1e-4, atol=1e-7)
    assert abs(mine.grad.sum().item()) < 1e-6  # a difference of two distributions: each row sums to 0


def _run(tiny_model_dir, text_file, out, e2e: E2EConfig | None = None, **kw):
    """The tiny model quantized with one epoch; with ``e2e`` the end-to-end stage follows."""
    return quantize_with(
        str(tiny_model_dir),
        method_config=PTQ161Config(epochs=1),
        calib=CalibConfig(dataset=f"text:{text_file}", nsamples=6, seqlen=64),
        output=out,
        progress=False,
        e2e=e2e,
        **kw,
    )


E2E = E2EConfig(steps=12, lr=5e-2, topk=32, heldout=2, save_every=4)


def test_e2e_lowers_the_kl_keeps_the_bits_and_resumes_identically(tiny_model_dir, text_file, tmp_path, monkeypatch):
    cfg = dataclasses.replace(E2E, generated=2)  # sampled windows too: saved once, like the teacher's logits
    plain = _run(tiny_model_dir, text_file, tmp_path / "plain")
    res = _run(tiny_model_dir, text_file, tmp_path / "full", cfg)
    log = res.meta["e2e_log"]
    assert log["train_kl_after"] < 0.7 * log["train_kl_before"]  # on its own training windows
    mean_after = (log["step_seconds"] * E2E.steps - log["first_step_seconds"]) / (E2E.steps - 1)  # split in two
    assert 0 < log["first_step_seconds"] and log["step_seconds_after_first"] == pytest.approx(mean_after, rel=1e-6)
    assert res.meta["bits"] == plain.meta["bits"]  # signs, codes, mask fixed: the same bits
    a, b = read_parts(tmp_path / "full"), read_parts(tmp_path / "plain")
    for layer in a:
        for k in ("mask", "sign", "codes", "zero"):
            assert torch.equal(a[layer][k], b[layer][k])
    assert read_meta(tmp_path / "full")["e2e"]["steps"] == 12

    real = e2e._checkpoint

    def save_then_die(state, params, opt, sched, step, stage):
        real(state, params, opt, sched, step, stage)
        if step == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(e2e, "_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_model_dir, text_file, tmp_path / "part", cfg)
    monkeypatch.setattr(e2e, "_checkpoint", real)

    def not_again(*args, **kwargs):
        raise AssertionError("a resumed run samples or runs the teacher again")

    monkeypatch.setattr(e2e, "teacher_topk", not_again)
    monkeypatch.setattr(e2e, "sample_windows", not_again)
    _run(tiny_model_dir, text_file, tmp_path / "part", cfg, resume=True)
    x, y = (
        load_file(str(tmp_path / "full" / "model.safetensors")),
        load_file(str(tmp_path / "part" / "model.safetensors")),
    )
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_e2e_with_the_tail_kl_lowers_its_kl_and_records_it(tiny_model_dir, text_file, tmp_path):
    res = _run(tiny_model_dir, text_file, tmp_path / "tail", dataclasses.replace(E2E, kl="tail", topk=4))
    log = res.meta["e2e_log"]
    assert log["train_kl_after"] < 0.7 * log["train_kl_before"]  # the tiny random model's KL is small
    assert read_meta(tmp_path / "tail")["e2e"]["kl"] == "tail"


def test_bad_e2e_settings_are_one_line_errors(tiny_model_dir, text_file, tmp_path):
    with pytest.raises(PTQ161Error):
        E2EConfig(steps=-1)
    with pytest.raises(PTQ161Error, match="kl"):
        E2EConfig(kl="full")
    with pytest.raises(PTQ161Error, match="no end-to-end stage"):
        quantize_with(str(tiny_model_dir), "rtn", e2e=E2EConfig(steps=2), progress=False)


def test_folded_linear_gradients_equal_autograd_through_the_weight():
    parts = random_parts(7, 12, 4, seed=1)
    mod = FoldedBinaryLinear(parts, torch.randn(7))
    with torch.no_grad():
        for p in mod.parameters():
            p.mul_(torch.rand_like(p) + 0.5)
    x = torch.randn(2, 3, 12, requires_grad=True)
    mod(x).square().sum().backward()
    got = [p.grad.clone() for p in mod.parameters()] + [x.grad.clone()]
    mod.zero_grad()
    x.grad = None
    (torch.nn.functional.linear(x, mod.weight(), mod.bias)).square().sum().backward()
    want = [p.grad for p in mod.parameters()] + [x.grad]
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6)


def test_latent_sign_gradient_is_the_straight_through_gradient_of_the_signs():
    parts = random_parts(6, 10, 3, seed=2)
    mod = FoldedBinaryLinear(parts, None, train_signs=True)
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(3))
    mod(x).square().sum().backward()
    # the same loss with the signs as a float tensor: dL/dsign is what the latent weights receive
    sign = mod.sign.float().requires_grad_(True)
    f = [mod.factor(k).detach() for k in ("scale", "a", "b", "r2")]
    w_bin = binary_dequantize(sign, f[1], f[2], f[3])
    w = assemble(mod.mask, rtn_dequantize(mod.codes, f[0], mod.zero), w_bin)
    (x @ w.T).square().sum().backward()
    assert torch.allclose(mod.latent.grad, sign.grad, rtol=1e-5, atol=1e-6)


def test_trained_signs_move_towards_a_target_with_other_signs():
    parts = random_parts(8, 24, 6, seed=4)
    target = FoldedBinaryLinear(parts, None)
    wrong = torch.rand(target.sign.shape, generator=torch.Generator().manual_seed(5)) < 0.2
    target.sign[wrong] *= -1  # the target has 20 % of the signs flipped
    w_target = target.weight().detach()
    mod = FoldedBinaryLinear(parts, None, train_signs=True)
    opt = torch.optim.Adam([mod.latent], lr=0.05)
    gen = torch.Generator().manual_seed(6)
    before = (mod.signs() == target.sign).float().mean()
    for _ in range(200):
        x = torch.randn(32, 24, generator=gen)
        loss = (mod(x) - x @ w_target.T).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = (mod.signs() == target.sign).float().mean()
    assert before < 0.85 and after > before + 0.1
    flipped, total = mod.flipped()
    assert flipped > 0 and total == mod.sign.numel()
    stored = FoldedBinaryLinear(mod.parts(), None)  # the flipped signs are what is stored
    assert torch.equal(stored.sign, mod.signs())


def test_train_signs_keeps_the_bits_and_reports_flips(tiny_model_dir, text_file, tmp_path):
    # the top-k KL: on the tiny random model the tail KL is ~1e-4 and 0.5-sized sign steps overshoot it
    signs = dataclasses.replace(E2E, train_signs=True, sign_lr=0.5, kl="topk")
    res = _run(tiny_model_dir, text_file, tmp_path / "signs", signs)
    log = res.meta["e2e_log"]
    assert log["train_kl_after"] < log["train_kl_before"]
    assert 0 < log["signs_flipped"] and 0 < log["signs_flipped_share"] < 0.5
    assert res.meta["bits"] == _run(tiny_model_dir, text_file, None).meta["bits"]
    assert read_meta(tmp_path / "signs")["e2e"]["train_signs"] is True


def test_folded_linear_in_bfloat16_keeps_codes_exact_and_gradients_close():
    parts = random_parts(16, 40, 8, seed=7)
    f32 = FoldedBinaryLinear(parts, None)
    b16 = FoldedBinaryLinear(parts, None, matmul_dtype=torch.bfloat16)
    assert torch.equal(b16.q_sal.float(), f32.q_sal)  # codes - zero: small integers, exact
    x = torch.randn(2, 6, 40, generator=torch.Generator().manual_seed(8))
    dy = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(9))
    outs = [mod(x) for mod in (f32, b16)]
    assert (outs[0] - outs[1]).norm() < 0.01 * outs[0].norm()
    mods = (f32, b16)
    grads = [torch.autograd.grad((y * dy).sum(), list(mod.parameters())) for y, mod in zip(outs, mods, strict=True)]
    for a, b in zip(*grads, strict=True):
        assert (a - b).norm() < 0.02 * a.norm()


@pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="no C++ compiler")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_compiled_e2e_equals_eager_compiles_once_for_all_layers_and_restores_them(text_file, tmp_path, arch):
    """--e2e-compile: every decoder layer after the first through one graph; the result equals eager training within
    float rounding, and the model's own layers are back afterwards (Qwen2's forward reads a layer setting)."""
    from torch._dynamo.utils import counters

    model_dir = save_model_dir((tiny_llama if arch == "llama" else tiny_qwen2)(num_hidden_layers=3), tmp_path / arch)
    cfg = dataclasses.replace(E2E, steps=6)
    eager = _run(model_dir, text_file, None, cfg)
    torch._dynamo.reset()
    counters.clear()
    comp = _run(model_dir, text_file, None, dataclasses.replace(cfg, compile="on"))
    # two graphs for three layers and every step: the first layer's input needs no gradient, the others' do
    assert counters["stats"]["unique_graphs"] == 2
    layers = comp.model.model.layers
    assert len(layers) == 3 and not any(isinstance(m, e2e._WrappedLayer) for m in comp.model.modules())
    assert_parts_close(comp.parts, eager.parts)
    a, b = eager.meta["e2e_log"], comp.meta["e2e_log"]
    # the KL ends near zero on this tiny model (3e-5): rounding is measured against the KL it started from
    assert b["train_kl_after"] == pytest.approx(a["train_kl_after"], rel=1e-3, abs=1e-3 * a["train_kl_before"])
    assert b["train_kl_after"] < 0.9 * b["train_kl_before"]


def test_e2e_windows_add_windows_after_the_block_stages_and_keep_its_result(tiny_model_dir, text_file, tmp_path):
    """--e2e-windows 10 with 6 calibration windows: the block stage sees the same 6 windows (same parts
    as a run without the stage's extra windows), the stage trains on 8 and holds out the last 2."""
    from ptq161.data import calibration_windows
    from ptq161.models import load_model

    tok = load_model(str(tiny_model_dir))[1]
    few, _ = calibration_windows(f"text:{text_file}", tok, nsamples=6, seqlen=64, seed=2)
    more, _ = calibration_windows(f"text:{text_file}", tok, nsamples=10, seqlen=64, seed=2)
    assert torch.equal(more[:6], few)  # the first windows do not depend on how many are drawn
    cfg = dataclasses.replace(E2E, steps=2)
    plain = _run(tiny_model_dir, text_file, None, cfg)
    wide = _run(tiny_model_dir, text_file, tmp_path / "wide", dataclasses.replace(cfg, windows=10))

    def timeless(logs: list[dict]) -> list[dict]:
        return [{k: v for k, v in log.items() if k != "seconds"} for log in logs]

    assert timeless(wide.meta["block_logs"]) == timeless(plain.meta["block_logs"])  # the same block stage
    assert (wide.meta["e2e_log"]["train_windows"], wide.meta["e2e_log"]["heldout_windows"]) == (8, 2)
    assert plain.meta["e2e_log"]["train_windows"] == 4
    assert read_meta(tmp_path / "wide")["e2e"]["windows"] == 10


def _naive_sample(model, prompts: torch.Tensor, length: int, seed: int) -> torch.Tensor:
    """The same sampling without a KV cache: one window at a time, the whole sequence forward at every step,
    each window with its own generator seeded as ``sample_windows`` seeds it."""
    out = []
    with torch.no_grad():
        for prompt, gen in zip(prompts, e2e.window_generators(seed, prompts.shape[0]), strict=True):
            seq = prompt[None]
            while seq.shape[1] < length:
                probs = torch.softmax(model(input_ids=seq).logits[0, -1].float(), dim=-1)
                seq = torch.cat([seq, torch.multinomial(probs, 1, generator=gen)[None]], dim=1)
            out.append(seq[0])
    return torch.stack(out)


@pytest.mark.parametrize("arch", [tiny_llama, tiny_qwen2])
def test_sampled_windows_continue_their_prompts_as_the_uncached_model_samples(arch):
    model = arch(seed=5)
    prompts = torch.randint(0, 260, (5, 8), generator=torch.Generator().manual_seed(1))
    got = e2e.sample_windows(model, prompts, 24, seed=7, batch=5)
    assert got.shape == (5, 24) and got.dtype == torch.int64
    assert torch.equal(got[:, :8], prompts)
    assert torch.equal(got, _naive_sample(model, prompts, 24, seed=7))  # the cached steps are the model's
    assert torch.equal(got, e2e.sample_windows(model, prompts, 24, seed=7, batch=2))  # any batch, same windows
    assert not torch.equal(got, e2e.sample_windows(model, prompts, 24, seed=8, batch=5))
    with pytest.raises(PTQ161Error, match="cannot start"):
        e2e.sample_windows(model, prompts, 4, seed=7)


def test_sampled_tokens_follow_the_model_distribution():
    """One step from one prompt, 4000 times: the empirical frequencies match softmax(logits) (chi-square-like bound)."""
    model = tiny_llama(seed=2)
    prompt = torch.tensor([[3, 9, 27, 81]])
    with torch.no_grad():
        model.lm_head.weight.mul_(8)  # far from uniform: largest probability 0.077, 25 tokens above 0.01
        p = torch.softmax(model(input_ids=prompt).logits[0, -1].float(), dim=-1)
    draws = e2e.sample_windows(model, prompt.repeat(4000, 1), 5, seed=0, batch=1000)[:, -1]
    freq = torch.bincount(draws, minlength=p.numel()).float() / 4000
    assert (freq - p).abs().max() < 5 * (p.max() / 4000) ** 0.5  # five standard errors of the largest cell


def test_generated_windows_go_before_the_held_out_real_ones(tiny_model_dir, text_file, tmp_path):
    from ptq161.data import calibration_windows
    from ptq161.models import load_model

    model, tok = load_model(str(tiny_model_dir))
    real, _ = calibration_windows(f"text:{text_file}", tok, nsamples=6, seqlen=64, seed=2)
    cfg = dataclasses.replace(E2E, generated=3)  # heldout 2
    wins = e2e.with_generated(model, real, cfg, seed=2)
    assert wins.shape == (9, 64)
    assert torch.equal(wins[:4], real[:4]) and torch.equal(wins[-2:], real[-2:])
    starts = real[torch.arange(3) % 6, : e2e.GENERATED_PREFIX]
    assert torch.equal(wins[4:7, : e2e.GENERATED_PREFIX], starts)
    assert torch.equal(e2e.with_generated(model, real, E2E, seed=2), real)  # generated = 0: unchanged
    res = _run(tiny_model_dir, text_file, tmp_path / "gen", dataclasses.replace(cfg, steps=2))
    assert (res.meta["e2e_log"]["train_windows"], res.meta["e2e_log"]["heldout_windows"]) == (7, 2)
    assert read_meta(tmp_path / "gen")["e2e"]["generated"] == 3


def _saved_bytes(model, ids: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one forward of ``model`` on ids (outside checkpointed parts)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, use_cache=False).logits.sum().backward()
    return total


def test_checkpointed_layers_keep_less_for_the_backward_and_give_the_same_gradients():
    """--e2e-checkpoint: the decoder layers recompute in the backward, so the forward keeps far fewer bytes;
    the gradients equal those of the plain forward (the same products, run twice)."""
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(0, 260, (1, 48), generator=torch.Generator().manual_seed(0))
    adapter = e2e.get_adapter(model)
    layers = {f"{adapter.layers}.{i}": layer for i, layer in enumerate(adapter.decoder_layers(model))}
    plain = _saved_bytes(model, ids)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with e2e.wrapped_layers(model, layers, e2e.layer_call(False, True)):
        assert sum(isinstance(m, e2e._WrappedLayer) for m in model.modules()) == 3
        checkpointed = _saved_bytes(model, ids)
    assert not any(isinstance(m, e2e._WrappedLayer) for m in model.modules())
    assert checkpointed < 0.5 * plain
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_checkpointed_e2e_equals_plain_e2e(tiny_model_dir, text_file, tmp_path):
    cfg = dataclasses.replace(E2E, steps=6)
    plain = _run(tiny_model_dir, text_file, None, cfg)
    ckpt = _run(tiny_model_dir, text_file, None, dataclasses.replace(cfg, checkpoint=True))
    assert ckpt.meta["e2e_log"]["checkpointed"] and not plain.meta["e2e_log"]["checkpointed"]
    assert_parts_close(ckpt.parts, plain.parts)
    a, b = plain.meta["e2e_log"], ckpt.meta["e2e_log"]
    assert b["train_kl_after"] == pytest.approx(a["train_kl_after"], rel=1e-3, abs=1e-3 * a["train_kl_before"])


def test_the_stage_holds_no_dense_weight_and_restores_the_block_stage_weights_when_it_fails(
    tiny_model_dir, text_file, tmp_path, monkeypatch
):
    """During the stage the quantized linears' dense weights are released (only the trained modules live);
    a stage that fails gives every linear back the weight it had before the stage, bit for bit."""
    import ptq161.pipeline.quantize as quantize_module

    seen, before, linears = [], {}, {}
    real_train = e2e.train_end_to_end

    def train(model, method, parts, *args, **kwargs):
        for path in parts:
            linears[path] = model.get_submodule(path)
            before[path] = (linears[path].weight.detach().clone(), linears[path].weight.requires_grad)
        return real_train(model, method, parts, *args, **kwargs)

    def kl_then_fail(*args, **kwargs):
        seen.append([lin.weight.is_meta for lin in linears.values()])
        raise FloatingPointError("stop here")

    monkeypatch.setattr(quantize_module, "train_end_to_end", train)
    monkeypatch.setattr(e2e, "topk_kl", kl_then_fail)
    with pytest.raises(FloatingPointError):
        _run(tiny_model_dir, text_file, None, dataclasses.replace(E2E, steps=3))
    assert seen and all(seen[0]) and len(seen[0]) == 14  # every quantized linear released during the stage
    for path, lin in linears.items():
        assert torch.equal(lin.weight, before[path][0]), path
        assert lin.weight.requires_grad == before[path][1]
