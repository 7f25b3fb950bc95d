"""The block training loop shared by the methods that learn parameters block by block (PTQ1.61, OmniQuant).

A method swaps its trainable modules into the block (``swapped_in``), then ``train_block``
runs ``epochs`` passes over the calibration samples of the quantized stream ``ctx.x_q`` in
batches, one AdamW step per batch, with an optional cosine schedule and held-out samples
(the last ``holdout`` ones: the parameters of the epoch with the lowest held-out loss are
kept). The loss is the method's own pure function of the block outputs and of the targets
of the same samples (``loss_fn(y, *targets(sl))``), so that with ``compile`` the block's
forward and the loss run as one ``torch.compile`` graph; the block is an argument of that
graph, so every block of the model (same shapes) reuses the code compiled for the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..calibration import BlockCall, run_block
from ..calibration.capture import module_device
from ..config import option
from ..errors import PTQ161Error, check_finite
from ..primitives.device import can_compile
from . import ptq161_math as pm
from .base import BlockContext

# (outputs y [b, seq, d], *targets of the same samples) -> (total loss, *logged terms), scalar tensors
LossFn = Callable[..., tuple[torch.Tensor, ...]]
# samples sl -> the loss's arguments after y: tensors [b, ...] of those samples, or constants (settings)
TargetFn = Callable[[slice], tuple[Any, ...]]


CompileSetting = Literal["off", "auto", "on"]


@dataclass(frozen=True)
class TrainSettings:
    """How a block trains: passes, samples per step, schedule, held-out samples, and the names of the loss terms."""

    epochs: int
    batch_size: int = 1
    schedule: str = "constant"  # or "cosine" (10 % linear warm-up)
    holdout: int = 0
    terms: tuple[str, ...] = ("loss",)
    compile: CompileSetting = "off"  # the block forward and the loss as one torch.compile graph (resolve_compile)


def compile_option() -> CompileSetting:
    """The ``--train-compile`` config field of the methods that train on this loop ("off" by default)."""
    return option(
        "off",
        "run each block's training forward and loss through torch.compile, one graph for every block: on, off, "
        "or auto (on where the device has a compiler: a C++ compiler on CPUs, triton on CUDA); results equal "
        "eager ones within float rounding",
    )


def adamw(param_groups: list[dict[str, Any]]) -> torch.optim.AdamW:
    """AdamW without weight decay over ``param_groups``, fused (one kernel for all parameters instead of
    some ten small ops per parameter tensor) where torch has the fused kernel: parameters on CPU or CUDA.
    The same arithmetic as the per-tensor loop up to float rounding (a relative 2e-9 in 10 steps, tested)."""
    params = [p for g in param_groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(param_groups, weight_decay=0.0, fused=fused or None)


def check_compile_setting(setting: str) -> None:
    """A config's compile setting must be "off", "auto" or "on" (a ``PTQ161Error`` otherwise)."""
    if setting not in ("off", "auto", "on"):
        raise PTQ161Error(f"compile must be off, auto or on, got {setting!r}")


def resolve_compile(setting: str, device: torch.device) -> bool:
    """Whether to compile for ``setting`` ("off", "auto", "on") on ``device``; an unknown setting is an error."""
    check_compile_setting(setting)
    return setting == "on" or (setting == "auto" and can_compile(device))


def _forward_loss(block: nn.Module, x: torch.Tensor, call: BlockCall, loss_fn: LossFn, targets: tuple) -> tuple:
    """``loss_fn`` of the block's output on x [b, seq, d] (the graph ``TrainSettings.compile`` compiles)."""
    out = block(x, *call.args, **call.kwargs)
    return loss_fn(out[0] if isinstance(out, tuple) else out, *targets)


def _on(device: torch.device, targets: tuple) -> tuple:
    """The tensors of ``targets`` on ``device`` (constants unchanged)."""
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in targets)


@contextmanager
def swapped_in(block: nn.Module, modules: dict[str, nn.Module], originals: dict[str, nn.Module]) -> Iterator[None]:
    """Put ``modules`` in ``block`` at their paths with the block's own parameters frozen; restore on exit."""
    frozen = [p for p in block.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for name, mod in modules.items():
        block.set_submodule(name, mod)
    try:
        with torch.enable_grad():
            yield
    finally:
        for name, mod in originals.items():
            block.set_submodule(name, mod)
        for p in frozen:
            p.requires_grad_(True)


def train_block(
    ctx: BlockContext,
    param_groups: list[dict[str, Any]],
    loss_fn: LossFn,
    targets: TargetFn,
    settings: TrainSettings,
) -> dict[str, Any]:
    """Train ``param_groups`` (AdamW, no weight decay) on the block; returns the log.

    The loss of samples ``sl`` is ``loss_fn(y, *targets(sl))`` with y the block's outputs
    [b, seq, d]; ``loss_fn`` should be one module-level function (a compiled graph is reused
    only by calls with the same function).

    The log has, for each loss term, its mean over the first and the last epoch
    (``{term}_first_epoch`` / ``_last_epoch``), the loss of every epoch (``loss_by_epoch``)
    and, with held-out samples, ``heldout_by_epoch`` and ``best_epoch``.
    """
    opt = adamw(param_groups)
    n_all, bs = ctx.x_q.shape[0], settings.batch_size
    n = n_all - settings.holdout if settings.holdout < n_all else n_all  # the last windows are held out
    total_steps = settings.epochs * -(-n // bs)
    sched = None
    if settings.schedule == "cosine":
        warm = max(1, total_steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: pm.cosine_warmup(k, total_steps, warm))
    history: list[dict] = []
    best: tuple[float, list[torch.Tensor]] | None = None
    trainable = [p for g in param_groups for p in g["params"]]
    names = settings.terms
    compiled = resolve_compile(settings.compile, module_device(ctx.block))
    step = _compiled_step(ctx, loss_fn, targets) if compiled else None
    for epoch in range(settings.epochs):
        sums = [0.0] * len(names)
        for i in range(0, n, bs):
            sl = slice(i, min(i + bs, n))
            if step is not None:
                terms = step(sl)
            else:
                terms = loss_fn(run_block(ctx.block, ctx.x_q[sl], ctx.call, batch_size=bs), *targets(sl))
            loss = terms[0]
            check_finite(loss.detach(), f"block {ctx.index}: the training loss (epoch {epoch + 1}, sample {i})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            for k, v in enumerate(terms):
                sums[k] += v.item() * (sl.stop - sl.start)
        rec = {name: s / n for name, s in zip(names, sums, strict=True)}
        if n < n_all:
            with torch.no_grad():
                sl = slice(n, n_all)
                rec["heldout"] = loss_fn(run_block(ctx.block, ctx.x_q[sl], ctx.call), *targets(sl))[0].item()
            if best is None or rec["heldout"] < best[0]:
                best = (rec["heldout"], [p.detach().clone() for p in trainable])
        history.append(rec)
        ctx.report(epoch=f"{epoch + 1}/{settings.epochs}", loss=f"{rec[names[0]]:.4g}")
    log: dict[str, Any] = {"compiled": compiled}
    for name in names:
        log[f"{name}_first_epoch"] = history[0][name]
        log[f"{name}_last_epoch"] = history[-1][name]
    log["loss_by_epoch"] = [h[names[0]] for h in history]
    if best is not None:
        with torch.no_grad():
            for p, v in zip(trainable, best[1], strict=True):
                p.copy_(v)
        log["heldout_by_epoch"] = [h["heldout"] for h in history]
        log["best_epoch"] = 1 + min(range(len(history)), key=lambda e: history[e]["heldout"])
    return log


def checked_compile(fn: Callable[..., Any], flag: str) -> Callable[..., Any]:
    """``torch.compile(fn)`` whose first call turns a compiler failure (no C++ compiler for the CPU
    backend, say) into a one-line ``PTQ161Error`` naming ``flag``, not a traceback."""
    graph = torch.compile(fn)
    compiled = False

    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal compiled
        if compiled:
            return graph(*args, **kwargs)
        try:
            out = graph(*args, **kwargs)
        except Exception as e:  # the compiler's own errors: many types, all of them "cannot compile here"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PTQ161Error(f"{flag}: torch.compile failed on this machine ({msg}); pass {flag} off") from e
        compiled = True
        return out

    return call


def _compiled_step(ctx: BlockContext, loss_fn: LossFn, targets: TargetFn) -> Callable[[slice], tuple]:
    """samples sl -> the loss terms, through ``torch.compile`` of ``_forward_loss`` on the block's device."""
    graph = checked_compile(_forward_loss, "--train-compile")
    device = module_device(ctx.block)
    call = ctx.call.to(device)
    return lambda sl: graph(ctx.block, ctx.x_q[sl].to(device), call, loss_fn, _on(device, targets(sl)))
