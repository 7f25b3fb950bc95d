"""End-to-end stage after the block stage: train the quantization factors of the whole model against the
FP model's output distribution (beyond the paper).

The teacher's logits on the calibration windows are computed once, before the block stage
changes the model, and kept as the top-k per token (values and indices) plus the logsumexp of the
other logits, so the KL is over k + 1 categories (``kl="tail"``): a top-k KL alone would teach the
student to put no mass on the rest of the vocabulary, where the teacher does put some, and where
some of the real next tokens fall (how much: benchmarks/results/teacher_tail.md). Every quantized
linear is swapped for the method's trainable module (``Method.trainable_module``: for
PTQ1.61 the fp16 factors a, b, r2 and the 4-bit scales, each times a trainable multiplier;
signs, codes, zero points and masks stay, so the bits do not change), and the student is
trained on KL(teacher top-k || student) with AdamW and a cosine schedule with warm-up.
With ``train_signs`` the binary signs train too, through a straight-through estimator on latent
weights (their own learning rate ``sign_lr``); a flipped sign is still one bit on disk.
The last ``heldout`` windows are not trained on: their KL before and after says whether the
stage generalises (the KL on the first 8 training windows is logged beside it). Progress is
saved every ``save_every`` steps (``RunState``), so a killed run resumes to the same result.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..config import option
from ..errors import PTQ161Error
from ..methods import Method, Parts
from ..methods.block_training import adamw, check_compile_setting, checked_compile, resolve_compile
from ..methods.ptq161_math import cosine_warmup
from ..models import get_adapter
from ..parallel import World
from .state import RunState, load_training, save_training

GENERATED_PREFIX = 8  # tokens of a calibration window each generated window continues


@dataclass
class E2EConfig:
    """Settings of the end-to-end stage; ``steps = 0`` turns it off (the paper has no such stage)."""

    steps: int = option(0, "end-to-end distillation steps after the block stage (0 = off, the paper)", minimum=0)
    lr: float = option(
        1e-3,
        "end-to-end learning rate (relative: factors move by this share)",
        minimum=0,
        exclusive=True,
    )
    topk: int = option(64, "teacher logits kept per token (top-k)", minimum=1)
    windows: int = option(
        0,
        "calibration windows the end-to-end stage trains on (0 = the block stage's; more draws further windows "
        "from the same source and seed, so the block stage's are the first of them)",
        minimum=0,
    )
    generated: int = option(
        0,
        "windows of text sampled from the FP model itself (temperature 1, each continuing the first "
        f"{GENERATED_PREFIX} tokens of a calibration window) added to the end-to-end stage's training windows: "
        "distillation on the model's own distribution (as LLM-QAT) rather than on more of the calibration corpus",
        minimum=0,
    )
    kl: Literal["tail", "topk"] = option(
        "tail",
        "the distillation target: 'tail' = the teacher's top-k plus one category holding the rest of its "
        "probability; 'topk' = the top-k renormalised (the student learns to drop the rest of the vocabulary)",
    )
    train_signs: bool = option(
        False,
        "let the binary signs flip too (straight-through estimator on latent weights; bits unchanged)",
        aliases=("--train-signs",),
    )
    sign_lr: float = option(
        5e-2,
        "learning rate of the latent sign weights (start at +-1)",
        aliases=("--sign-lr",),
        minimum=0,
        exclusive=True,
    )
    compile: Literal["off", "auto", "on"] = option(
        "off",
        "run the end-to-end stage's decoder layers through one torch.compile graph (the layer is its argument): "
        "on, off, or auto (on where the device has a compiler: a C++ compiler on CPUs, triton on CUDA); results "
        "equal eager ones within float rounding",
    )
    batch: int = option(
        1,
        "windows per step and rank (their gradients averaged); under torchrun every rank takes this many windows "
        "of each step's batch, so a step sees batch x ranks windows",
        minimum=1,
    )
    checkpoint: bool = option(
        False,
        "recompute each decoder layer in the backward (activation checkpointing): the stage then keeps only "
        "the layers' inputs, not their activations, for about a third more compute; same results within float "
        "rounding",
    )
    heldout: int = 4
    warmup: float = 0.1
    save_every: int = 25

    def __post_init__(self) -> None:
        if min(self.steps, self.heldout, self.windows, self.generated) < 0 or min(self.topk, self.save_every) < 1:
            raise PTQ161Error(
                "e2e needs steps >= 0, topk >= 1, windows >= 0, generated >= 0, heldout >= 0 and save_every >= 1"
            )
        if self.batch < 1:
            raise PTQ161Error(f"e2e batch must be at least 1, got {self.batch}")
        if self.kl not in ("tail", "topk"):
            raise PTQ161Error(f"e2e kl must be 'tail' or 'topk', got {self.kl!r}")
        check_compile_setting(self.compile)
        if self.lr <= 0 or self.sign_lr <= 0 or not 0 <= self.warmup < 1:
            raise PTQ161Error("e2e needs lr > 0, sign_lr > 0 and 0 <= warmup < 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


def rest_logsumexp(logits: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """logsumexp over every vocabulary entry but ``indices``: logits [T, V], indices [T, k] -> [T, 1]."""
    return logits.scatter(-1, indices.long(), float("-inf")).logsumexp(dim=-1, keepdim=True)


def window_generators(seed: int, n: int) -> list[torch.Generator]:
    """One CPU generator per window, ``n`` of them, each seeded from ``seed`` and the window's index."""
    seeds = torch.randint(2**62, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [torch.Generator().manual_seed(s) for s in seeds]


@torch.no_grad()
def sample_windows(
    model: nn.Module, prompts: torch.Tensor, length: int, seed: int, batch: int = 64, progress: bool = False
) -> torch.Tensor:
    """Continue each prompt of int64 [N, P] by sampling ``model`` at temperature 1 up to ``length`` tokens:
    int64 [N, length]. Every window draws from a generator of its own (seeded from ``seed`` and its index),
    so the result does not depend on ``batch``, only on float rounding of the batched forward."""
    if not 0 < prompts.shape[1] <= length:
        raise PTQ161Error(f"prompts of {prompts.shape[1]} tokens cannot start windows of {length}")
    device = next(model.parameters()).device
    gens = window_generators(seed, prompts.shape[0])
    out = []
    new_tokens = length - prompts.shape[1]
    bar = tqdm(total=prompts.shape[0] * new_tokens, desc="sampling windows", unit="token", disable=not progress)
    for start in range(0, prompts.shape[0], batch):
        chunk = prompts[start : start + batch]
        seq = [chunk]
        cache = DynamicCache()
        step_ids = chunk.to(device)
        for _ in range(new_tokens):
            logits = model(input_ids=step_ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
            probs = torch.softmax(logits.float(), dim=-1).cpu()
            nxt = torch.cat([torch.multinomial(probs[r], 1, generator=gens[start + r]) for r in range(len(chunk))])
            seq.append(nxt[:, None])
            step_ids = seq[-1].to(device)
            bar.update(chunk.shape[0])
        out.append(torch.cat(seq, dim=1))
    bar.close()
    return torch.cat(out)


def with_generated(
    model: nn.Module, windows: torch.Tensor, cfg: E2EConfig, seed: int, progress: bool = False
) -> torch.Tensor:
    """The end-to-end stage's windows: the calibration windows int64 [N, T] with ``cfg.generated`` windows
    sampled from ``model`` inserted before the last ``cfg.heldout`` (so the held-out ones stay real text):
    int64 [N + generated, T]. Call it with the FP model, before the block stage."""
    if not cfg.generated:
        return windows
    starts = windows[torch.arange(cfg.generated) % windows.shape[0], :GENERATED_PREFIX]
    sampled = sample_windows(model, starts, windows.shape[1], seed, progress=progress)
    cut = windows.shape[0] - min(cfg.heldout, windows.shape[0])
    return torch.cat([windows[:cut], sampled, windows[cut:]])


@torch.no_grad()
def teacher_topk(
    model: nn.Module, windows: torch.Tensor, k: int, world: World | None = None
) -> dict[str, torch.Tensor]:
    """Top-k logits of ``model`` for every token of windows int64 [N, T]: values float32 [N, T, k], indices
    int32 [N, T, k], and ``rest`` float32 [N, T, 1], the logsumexp of the other logits (the tail's mass).
    Under torchrun (``world``) each rank computes its share of the windows and every rank gets them all."""
    world = world or World.current()
    device = next(model.parameters()).device
    mine = {}
    for i in world.shard(windows.shape[0]):
        logits = model(input_ids=windows[i][None].to(device), use_cache=False).logits[0].float()
        top = torch.topk(logits, k, dim=-1)
        rest = rest_logsumexp(logits, top.indices).cpu()
        mine[i] = (top.values.cpu(), top.indices.to(torch.int32).cpu(), rest)
    vals, idx, rest = zip(*world.gather(windows.shape[0], mine), strict=True)
    return {"values": torch.stack(vals), "indices": torch.stack(idx), "rest": torch.stack(rest)}


def e2e_targets(
    model: nn.Module,
    windows: torch.Tensor,
    cfg: E2EConfig,
    seed: int,
    state: RunState | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The end-to-end stage's windows (``with_generated``: int64 [N + generated, T]) and the teacher's top-k on
    them (``teacher_topk``), from the FP model before the block stage. With ``state`` they are saved once, and a
    resumed run reads them back instead of sampling and running the teacher again."""
    if state is not None and state.progress() is not None:
        saved = state.load("targets")
        return saved["windows"], {k.removeprefix("teacher."): v for k, v in saved.items() if k != "windows"}
    windows = with_generated(model, windows, cfg, seed, progress)
    teacher = teacher_topk(model, windows, cfg.topk)
    if state is not None:
        state.save("targets", {"windows": windows, **{f"teacher.{k}": v for k, v in teacher.items()}})
        state.commit({"windows": windows.shape[0]})
    return windows, teacher


class _TopkKL(torch.autograd.Function):
    """``topk_kl`` with its gradient in closed form: d/dlogits = (softmax(logits) - scatter(p)) / T (the
    teacher's p sums to 1 over the top k), one pass over [T, V] instead of autograd's log-softmax output,
    the zero-filled gather gradient and the log-softmax backward (three [T, V] tensors a step)."""

    @staticmethod
    def forward(ctx, logits, values, indices):
        logits = logits.float()
        idx = indices.long()
        p_log = F.log_softmax(values.float(), dim=-1)  # [T, k]
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [T, 1]
        q_log = logits.gather(-1, idx) - lse
        p = p_log.exp()
        ctx.save_for_backward(logits, p, idx)
        return (p * (p_log - q_log)).sum(dim=-1).mean()

    @staticmethod
    def backward(ctx, g):
        logits, p, idx = ctx.saved_tensors
        grad = torch.softmax(logits, dim=-1)  # [T, V] (one fused kernel, faster than exp(logits - lse))
        grad.scatter_add_(-1, idx, -p)
        return grad.mul_(g / logits.shape[0]), None, None


class _TailKL(torch.autograd.Function):
    """``topk_kl`` over k + 1 categories (the top k and the tail bucket), gradient in closed form.

    With q = softmax(logits), q_r the student's tail mass and p_r the teacher's:
    d/dlogit_j = q_j - p_j on the top k and q_j (1 - p_r / q_r) elsewhere (divided by T)."""

    @staticmethod
    def forward(ctx, logits, values, indices, rest):
        logits = logits.float()
        idx = indices.long()
        p_log = F.log_softmax(torch.cat([values.float(), rest.float()], dim=-1), dim=-1)  # [T, k + 1]
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # [T, 1]
        q_log = torch.cat([logits.gather(-1, idx), rest_logsumexp(logits, idx)], dim=-1) - lse
        p = p_log.exp()
        ctx.save_for_backward(logits, p, q_log, idx)
        return (p * (p_log - q_log)).sum(dim=-1).mean()

    @staticmethod
    def backward(ctx, g):
        logits, p, q_log, idx = ctx.saved_tensors
        grad = torch.softmax(logits, dim=-1)  # [T, V]
        grad.mul_(1 - p[:, -1:] / q_log[:, -1:].exp())
        grad.scatter_(-1, idx, q_log[:, :-1].exp() - p[:, :-1])
        return grad.mul_(g / logits.shape[0]), None, None, None


def topk_kl(
    logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, rest: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over tokens of KL(p || q) on the teacher's top-k: p = softmax(values), q = the student's
    full-vocabulary softmax at those indices. logits [T, V], values / indices [T, k] -> scalar
    (its gradient in closed form, ``_TopkKL``). With ``rest`` [T, 1] (the logsumexp of the teacher's
    other logits) the KL is over k + 1 categories: the tail's mass is one more category (``_TailKL``)."""
    if rest is None:
        return _TopkKL.apply(logits, values, indices)
    return _TailKL.apply(logits, values, indices, rest)


def _call_layer(layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``layer(*args, **kwargs)``: the function ``--e2e-compile`` compiles once for all decoder layers."""
    return layer(*args, **kwargs)


class _WrappedLayer(nn.Module):
    """A decoder layer called through ``call(layer, *args, **kwargs)``; other attributes (an architecture's
    per-layer settings that the model's forward reads) come from the layer."""

    def __init__(self, layer: nn.Module, call: Any) -> None:
        super().__init__()
        self.layer = layer
        self._call = call

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.layer, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)


def layer_call(compiled: bool, checkpoint: bool) -> Any | None:
    """How the end-to-end stage calls each decoder layer: through one compiled graph shared by all layers
    (``--e2e-compile``), recomputed in the backward (``--e2e-checkpoint``: non-reentrant
    ``torch.utils.checkpoint``), both, or None (as the model does)."""
    if not compiled and not checkpoint:
        return None
    call = checked_compile(_call_layer, "--e2e-compile") if compiled else _call_layer
    if not checkpoint:
        return call

    def recomputed(layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return torch.utils.checkpoint.checkpoint(call, layer, *args, use_reentrant=False, **kwargs)

    return recomputed


@contextmanager
def wrapped_layers(model: nn.Module, layers: dict[str, nn.Module], call: Any | None) -> Iterator[None]:
    """Inside the block, the decoder ``layers`` ({path: layer}) of ``model`` run through ``call`` (see
    ``layer_call``; None: no change)."""
    if call is None or not layers:
        yield
        return
    try:
        for path, layer in layers.items():
            model.set_submodule(path, _WrappedLayer(layer, call))
        yield
    finally:
        for path, layer in layers.items():
            model.set_submodule(path, layer)


def _target(teacher: dict[str, torch.Tensor], i: int, cfg_kl: str, device: torch.device) -> tuple:
    """(values, indices, rest or None) of window ``i`` on ``device`` for the KL ``cfg_kl``."""
    rest = teacher["rest"][i].to(device) if cfg_kl == "tail" else None
    return teacher["values"][i].to(device), teacher["indices"][i].to(device), rest


def _kl_on(model: nn.Module, windows: torch.Tensor, teacher: dict[str, torch.Tensor], rows: range, kl: str) -> float:
    """Mean KL (``E2EConfig.kl``) of ``model`` over the windows ``rows``."""
    device = next(model.parameters()).device
    with torch.no_grad():
        kls = [
            topk_kl(
                model(input_ids=windows[i][None].to(device), use_cache=False).logits[0],
                *_target(teacher, i, kl, device),
            ).item()
            for i in rows
        ]
    return sum(kls) / max(len(kls), 1)


def train_end_to_end(
    model: nn.Module,
    method: Method,
    parts: dict[str, Parts],
    windows: torch.Tensor,
    teacher: dict[str, torch.Tensor],
    cfg: E2EConfig,
    state: RunState | None = None,
    progress: bool = True,
) -> tuple[dict[str, Parts], dict[str, Any]]:
    """Train ``method``'s factors of every layer in ``parts`` on ``windows`` [N, T] against ``teacher``.

    Step k trains on the ``cfg.batch x ranks`` training windows that follow step k - 1's (cyclically), the
    mean KL over them. Under torchrun (``World.current()``) window j of a step belongs to rank j % ranks:
    every rank starts from rank 0's parts, computes its windows' gradients, and the ranks sum them
    (all-reduce), so each rank takes the same optimizer step as one process with the whole batch would;
    rank 0 alone saves the state. Returns (new parts, log). The model's quantized linears end with the
    weights of the new parts.
    """
    world = World.current()
    parts = world.broadcast(parts)  # one start for every rank: rank 0's (the only rank that ran the block stage)
    device = next(model.parameters()).device
    modules = {
        path: method.trainable_module(p, model.get_submodule(path).bias, cfg.train_signs, device)
        for path, p in parts.items()
    }
    if any(m is None for m in modules.values()):
        raise PTQ161Error(
            f"method '{method.name}' has no end-to-end stage (--e2e-steps needs ptq161 with 4-bit codes, gptq or "
            "omniquant)"
        )
    originals = {path: model.get_submodule(path) for path in parts}
    restore = _release_weights(originals)  # the stage trains its own modules: the dense weights are not kept
    layers: dict[str, nn.Module] = {}
    compiled = resolve_compile(cfg.compile, device)
    call = layer_call(compiled, cfg.checkpoint)
    if call is not None:  # found before the trainable modules replace the linears the adapter recognises
        adapter = get_adapter(model)
        layers = {f"{adapter.layers}.{i}": layer for i, layer in enumerate(adapter.decoder_layers(model))}
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for path, mod in modules.items():
        model.set_submodule(path, mod.to(device))
    # a fixed order (a resumed block stage reads its parts back in another order)
    named = [(name, p) for path in sorted(modules) for name, p in modules[path].named_parameters()]
    params = [p for _name, p in named]
    latents = [p for name, p in named if name == "latent"]
    factors = [p for name, p in named if name != "latent"]
    n_train = windows.shape[0] - cfg.heldout if cfg.heldout < windows.shape[0] else windows.shape[0]
    held = range(n_train, windows.shape[0])
    groups = [{"params": factors, "lr": cfg.lr}] + ([{"params": latents, "lr": cfg.sign_lr}] if latents else [])
    opt = adamw(groups)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: cosine_warmup(k, cfg.steps, warm))
    per_step = cfg.batch * world.size
    t0 = time.perf_counter()
    try:
        stage = (state.progress() if state is not None else None) or {"step": 0, "losses": [], "ranks": world.size}
        step = stage["step"]
        if stage.get("ranks", 1) != world.size:
            raise PTQ161Error(
                f"the saved end-to-end stage ran on {stage.get('ranks', 1)} rank(s); resume it with as many "
                f"(this run has {world.size})"
            )
        if step:
            tensors = load_training(state, "e2e", opt, sched, stage)
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.copy_(tensors[f"param.{i}"])
        else:
            stage["heldout_kl_before"] = _kl_on(model, windows, teacher, held, cfg.kl)
            stage["train_kl_before"] = _kl_on(model, windows, teacher, range(min(n_train, 8)), cfg.kl)
        bar = tqdm(total=cfg.steps, initial=step, desc="end-to-end", unit="step", disable=not progress)
        first_step, reduce_seconds, t_steps, first_seconds = step, 0.0, time.perf_counter(), None
        with torch.enable_grad(), wrapped_layers(model, layers, call):
            while step < cfg.steps:
                opt.zero_grad(set_to_none=True)
                loss = torch.zeros((), dtype=torch.float64)
                for j in range(world.rank, per_step, world.size):  # this rank's windows of the step
                    i = (step * per_step + j) % n_train
                    logits = model(input_ids=windows[i][None].to(device), use_cache=False).logits[0]
                    kl = topk_kl(logits, *_target(teacher, i, cfg.kl, device)) / per_step
                    kl.backward()
                    loss += kl.detach().double().cpu()
                if world.size > 1:
                    t_reduce = time.perf_counter()
                    _sum_gradients(world, params, loss)
                    reduce_seconds += time.perf_counter() - t_reduce
                if not torch.isfinite(loss):  # the same sum on every rank: all stop together
                    raise PTQ161Error(f"end-to-end KL became {loss.item()} at step {step}; lower --e2e-lr")
                opt.step()
                sched.step()
                stage["losses"].append(round(loss.item(), 6))
                step += 1
                if first_seconds is None:  # this run's first step: it includes compiling the layer graph
                    first_seconds = time.perf_counter() - t_steps
                bar.update(1)
                bar.set_postfix(kl=f"{loss.item():.4f}")
                if state is not None and world.main and (step % cfg.save_every == 0 or step == cfg.steps):
                    _checkpoint(state, params, opt, sched, step, stage)
        bar.close()
        steps_run, t_steps = step - first_step, time.perf_counter() - t_steps
        stage["heldout_kl_after"] = _kl_on(model, windows, teacher, held, cfg.kl)
        stage["train_kl_after"] = _kl_on(model, windows, teacher, range(min(n_train, 8)), cfg.kl)
        new_parts = {path: mod.parts() for path, mod in modules.items()}
        flips = [mod.flipped() for mod in modules.values()] if cfg.train_signs else []
        flipped, n_signs = sum(f for f, _ in flips), sum(n for _, n in flips)
    except BaseException:
        restore(method, parts)  # the block stage's weights again, as before the stage
        raise
    finally:
        for path, lin in originals.items():
            model.set_submodule(path, lin)
        for p in frozen:
            p.requires_grad_(True)
    restore(method, new_parts)
    losses = stage["losses"]
    k = max(1, len(losses) // 10)
    log = {
        "steps": cfg.steps,
        "train_windows": n_train,
        "heldout_windows": len(held),
        "kl_first": sum(losses[:k]) / k if losses else None,
        "kl_last": sum(losses[-k:]) / k if losses else None,
        "train_kl_before": stage.get("train_kl_before"),
        "train_kl_after": stage["train_kl_after"],
        "heldout_kl_before": stage.get("heldout_kl_before"),
        "heldout_kl_after": stage["heldout_kl_after"],
        "compiled": compiled,
        "checkpointed": cfg.checkpoint,
        "ranks": world.size,
        "windows_per_step": per_step,
        # this run's steps (a resumed run: those after the resume): wall time and the all-reduce's share
        "step_seconds": t_steps / steps_run if steps_run else None,
        "first_step_seconds": first_seconds,  # compiling included (the steps after it: step_seconds_after_first)
        "step_seconds_after_first": (t_steps - first_seconds) / (steps_run - 1) if steps_run > 1 else None,
        "allreduce_seconds_per_step": reduce_seconds / steps_run if steps_run else None,
        "allreduce_bytes": 8 * (sum(p.numel() for p in params) + 1) if world.size > 1 else 0,
        "signs_flipped": flipped,
        "signs_flipped_share": flipped / n_signs if n_signs else 0.0,
        "seconds": time.perf_counter() - t0,
        "matmul_dtype": str(getattr(next(iter(modules.values())), "matmul_dtype", "float32")).removeprefix("torch."),
    }
    return new_parts, log


def _release_weights(linears: dict[str, nn.Module]) -> Any:
    """Drop the dense weights of ``linears`` (path -> linear; to ``meta``, their memory freed) while the stage
    trains its own modules; -> ``restore(method, parts)``, which gives each linear the weight of its parts
    (``method.dequantize``) in its former device, dtype and ``requires_grad``."""
    kept = {path: (lin.weight.device, lin.weight.dtype, lin.weight.requires_grad) for path, lin in linears.items()}
    for lin in linears.values():
        lin.weight = nn.Parameter(torch.empty_like(lin.weight, device="meta"), requires_grad=False)

    def restore(method: Method, parts: dict[str, Parts]) -> None:
        with torch.no_grad():
            for path, lin in linears.items():
                device, dtype, grad = kept[path]
                w = method.dequantize(parts[path]).to(device, dtype)
                lin.weight = nn.Parameter(w, requires_grad=grad)

    return restore


def _sum_gradients(world: World, params: list[torch.Tensor], loss: torch.Tensor) -> None:
    """Sum the gradients of ``params`` and the float64 scalar ``loss`` over the ranks, in one all-reduce
    (in place; a parameter without a gradient counts as zeros)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).double() for g in grads] + [loss.reshape(1)])
    world.all_reduce_(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view(g.shape).to(p.dtype)
        offset += g.numel()
    loss.copy_(flat[-1])


def _checkpoint(state: RunState, params: list[torch.Tensor], opt, sched, step: int, stage: dict[str, Any]) -> None:
    """Save the trained multipliers and the optimizer at ``step``, then commit the step."""
    save_training(state, "e2e", step, {f"param.{i}": p.detach() for i, p in enumerate(params)}, opt, sched, stage)
