"""End-to-end stage after the block stage: train the quantization factors of the whole model against the
FP model's output distribution (beyond the paper).

The teacher's logits on the calibration windows are computed once, before the block stage
changes the model, and kept as the top-k per token (values and indices). Every quantized
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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import option
from ..errors import PTQ161Error
from ..methods import Method, Parts
from ..methods.ptq161_math import cosine_warmup
from .state import RunState, load_training, save_training


@dataclass
class E2EConfig:
    """Settings of the end-to-end stage; ``steps = 0`` turns it off (the paper has no such stage)."""

    steps: int = option(
        0, "end-to-end distillation steps after the block stage (0 = off, the paper)", flag="--e2e-steps", minimum=0
    )
    lr: float = option(
        1e-3,
        "end-to-end learning rate (relative: factors move by this share)",
        flag="--e2e-lr",
        minimum=0,
        exclusive=True,
    )
    topk: int = option(64, "teacher logits kept per token (top-k)", flag="--e2e-topk", minimum=1)
    train_signs: bool = option(
        False,
        "let the binary signs flip too (straight-through estimator on latent weights; bits unchanged)",
        flag="--train-signs",
    )
    sign_lr: float = option(
        5e-2, "learning rate of the latent sign weights (start at +-1)", flag="--sign-lr", minimum=0, exclusive=True
    )
    heldout: int = 4
    warmup: float = 0.1
    save_every: int = 25

    def __post_init__(self) -> None:
        if self.steps < 0 or self.topk < 1 or self.heldout < 0 or self.save_every < 1:
            raise PTQ161Error("e2e needs steps >= 0, topk >= 1, heldout >= 0 and save_every >= 1")
        if self.lr <= 0 or self.sign_lr <= 0 or not 0 <= self.warmup < 1:
            raise PTQ161Error("e2e needs lr > 0, sign_lr > 0 and 0 <= warmup < 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@torch.no_grad()
def teacher_topk(model: nn.Module, windows: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Top-k logits of ``model`` for every token of windows int64 [N, T]: values float32 [N, T, k], indices int32."""
    device = next(model.parameters()).device
    vals, idx = [], []
    for w in windows:
        logits = model(input_ids=w[None].to(device), use_cache=False).logits[0].float()
        top = torch.topk(logits, k, dim=-1)
        vals.append(top.values.cpu())
        idx.append(top.indices.to(torch.int32).cpu())
    return {"values": torch.stack(vals), "indices": torch.stack(idx)}


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
        grad = torch.softmax(logits, dim=-1)  # [T, V] (one fused kernel: 1.6x exp(logits - lse) here)
        grad.scatter_add_(-1, idx, -p)
        return grad.mul_(g / logits.shape[0]), None, None


def topk_kl(logits: torch.Tensor, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(p || q) on the teacher's top-k: p = softmax(values), q = the student's
    full-vocabulary softmax at those indices. logits [T, V], values / indices [T, k] -> scalar
    (its gradient in closed form, ``_TopkKL``)."""
    return _TopkKL.apply(logits, values, indices)


def _kl_on(model: nn.Module, windows: torch.Tensor, teacher: dict[str, torch.Tensor], rows: range) -> float:
    """Mean top-k KL of ``model`` over the windows ``rows``."""
    device = next(model.parameters()).device
    with torch.no_grad():
        kls = [
            topk_kl(
                model(input_ids=windows[i][None].to(device), use_cache=False).logits[0],
                teacher["values"][i].to(device),
                teacher["indices"][i].to(device),
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

    Returns (new parts, log). The model's quantized linears end with the weights of the new parts.
    """
    device = next(model.parameters()).device
    modules = {
        path: method.trainable_module(p, model.get_submodule(path).bias, cfg.train_signs, device)
        for path, p in parts.items()
    }
    if any(m is None for m in modules.values()):
        raise PTQ161Error(f"method '{method.name}' has no end-to-end stage (--e2e-steps needs ptq161 with 4-bit codes)")
    originals = {path: model.get_submodule(path) for path in parts}
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
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warm = max(1, int(cfg.warmup * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: cosine_warmup(k, cfg.steps, warm))
    t0 = time.perf_counter()
    try:
        stage = (state.progress() if state is not None else None) or {"step": 0, "losses": []}
        step = stage["step"]
        if step:
            tensors = load_training(state, "e2e", opt, sched, stage)
            with torch.no_grad():
                for i, p in enumerate(params):
                    p.copy_(tensors[f"param.{i}"])
        else:
            stage["heldout_kl_before"] = _kl_on(model, windows, teacher, held)
            stage["train_kl_before"] = _kl_on(model, windows, teacher, range(min(n_train, 8)))
        bar = tqdm(total=cfg.steps, initial=step, desc="end-to-end", unit="step", disable=not progress)
        with torch.enable_grad():
            while step < cfg.steps:
                i = step % n_train
                logits = model(input_ids=windows[i][None].to(device), use_cache=False).logits[0]
                loss = topk_kl(logits, teacher["values"][i].to(device), teacher["indices"][i].to(device))
                if not torch.isfinite(loss):
                    raise PTQ161Error(f"end-to-end KL became {loss.item()} at step {step}; lower --e2e-lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                stage["losses"].append(round(loss.item(), 6))
                step += 1
                bar.update(1)
                bar.set_postfix(kl=f"{loss.item():.4f}")
                if state is not None and (step % cfg.save_every == 0 or step == cfg.steps):
                    _checkpoint(state, params, opt, sched, step, stage)
        bar.close()
        stage["heldout_kl_after"] = _kl_on(model, windows, teacher, held)
        stage["train_kl_after"] = _kl_on(model, windows, teacher, range(min(n_train, 8)))
        new_parts = {path: mod.parts() for path, mod in modules.items()}
        flips = [mod.flipped() for mod in modules.values()] if cfg.train_signs else []
        flipped, n_signs = sum(f for f, _ in flips), sum(n for _, n in flips)
    finally:
        for path, lin in originals.items():
            model.set_submodule(path, lin)
        for p in frozen:
            p.requires_grad_(True)
    with torch.no_grad():
        for path, p in new_parts.items():
            lin = originals[path]
            lin.weight.copy_(method.dequantize(p).to(lin.weight.device, lin.weight.dtype))
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
        "signs_flipped": flipped,
        "signs_flipped_share": flipped / n_signs if n_signs else 0.0,
        "seconds": time.perf_counter() - t0,
        "matmul_dtype": str(getattr(next(iter(modules.values())), "matmul_dtype", "float32")).removeprefix("torch."),
    }
    return new_parts, log


def _checkpoint(state: RunState, params: list[torch.Tensor], opt, sched, step: int, stage: dict[str, Any]) -> None:
    """Save the trained multipliers and the optimizer at ``step``, then commit the step."""
    save_training(state, "e2e", step, {f"param.{i}": p.detach() for i, p in enumerate(params)}, opt, sched, stage)
