"""Quantization preprocessing (the paper's "restorative LoRA", its section 4).

1. quantize the model once (PTQ1.61 by default, any registered method) and keep its
   fake-quantized dense weights W_hat1;
2. train a LoRA (peft) on top of that quantized model with the ordinary causal-LM loss on
   pretraining-like text that is not an evaluation split;
3. merge: W' = W_hat1 + (alpha / r) B A, saved as a plain Hugging Face model directory,
   the new starting point that ``ptq161 quantize`` accepts like any model.

Progress is checkpointed with the pipeline's one resume mechanism (``RunState``: the
quantized weights once, then adapter, optimizer, scheduler and RNG state every
``save_every`` steps, as safetensors + JSON), so an interrupted run continues from its
last saved step to the same result.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import calibration_windows
from ..errors import PTQ161Error
from ..models import get_adapter, load_model
from ..models.integrity import PREPROCESS_META, manifest
from ..utils import LOCK_NAME, atomic_write_json, os_errors, output_lock, peak_rss_mb
from .output_dir import check_output_dir, remove_leftovers
from .quantize import quantize
from .recipe import Recipe, resolve_recipe
from .state import STATE_DIR, RunState, load_training, save_training

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj")  # not o_proj, as the reference


@dataclass
class LoRAConfig:
    """The restorative LoRA; defaults are the reference recipe (20k sequences of 2048 tokens)."""

    rank: int = 64
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] = LORA_TARGETS
    steps: int = 20000
    batch_size: int = 1
    seqlen: int = 2048
    lr: float = 1e-4
    warmup: int = 1000
    schedule: str = "cosine"
    max_grad_norm: float = 1.0
    data: str = "c4"
    seed: int = 0
    save_every: int = 50

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise PTQ161Error("LoRA needs rank >= 1, alpha > 0 and 0 <= dropout < 1")
        if self.steps < 1 or self.batch_size < 1 or self.seqlen < 2 or self.save_every < 1:
            raise PTQ161Error("LoRA needs steps, batch size and save_every >= 1 and seqlen >= 2")
        if self.warmup < 0 or self.lr <= 0:
            raise PTQ161Error("LoRA needs lr > 0 and warmup >= 0")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise PTQ161Error("LoRA schedule must be cosine, linear or constant")
        if self.data.partition(":")[0] == "wikitext2" and self.data.partition(":")[2] in ("", "test"):
            raise PTQ161Error("LoRA text must not be an evaluation split: use c4, wikitext2:valid or text:PATH")

    def with_steps(self, steps: int) -> LoRAConfig:
        """The same recipe at ``steps`` steps, warm-up capped at a tenth of them."""
        return dataclasses.replace(self, steps=steps, warmup=min(self.warmup, steps // 10))

    @property
    def scale(self) -> float:
        """The merge factor alpha / r (0.25 in the reference recipe)."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings."""
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d


@dataclass(frozen=True)
class PreprocessPreset:
    """A budget: the recipe of the first quantization pass and the LoRA steps/length."""

    recipe: str
    steps: int
    seqlen: int
    warmup: int
    why: str


PREPROCESS_PRESETS: dict[str, PreprocessPreset] = {
    "paper": PreprocessPreset("paper", 20000, 2048, 1000, "the reference recipe: 20k sequences of 2048 tokens (GPU)"),
    "cpu": PreprocessPreset(
        "demo", 400, 256, 40, "a CPU budget: minutes for a 135M model (benchmarks/results/preprocess.md)"
    ),
    "smoke": PreprocessPreset("smoke", 4, 64, 1, "seconds, for tests"),
}


@dataclass
class PreprocessResult:
    """The merged model (W_hat1 + scale * B A, dense), where it was saved and the run's record."""

    model: nn.Module
    tokenizer: Any
    output: Path
    meta: dict[str, Any] = field(default_factory=dict)


def _schedule(opt: torch.optim.Optimizer, cfg: LoRAConfig) -> torch.optim.lr_scheduler.LRScheduler:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if cfg.schedule == "cosine":
        return get_cosine_schedule_with_warmup(opt, cfg.warmup, cfg.steps)
    if cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(opt, cfg.warmup, cfg.steps)
    return get_constant_schedule_with_warmup(opt, cfg.warmup)


def _quantized_linears(model: nn.Module) -> dict[str, torch.Tensor]:
    linears = get_adapter(model).model_linears(model)
    return {f"{name}.weight": lin.weight.detach().contiguous() for name, lin in linears.items()}


def _save_checkpoint(state: RunState, peft_model: nn.Module, opt, sched, step: int, stage: dict[str, Any]) -> None:
    """Save adapter, optimizer and RNG state for ``step``, then commit the step."""
    from peft import get_peft_model_state_dict

    tensors = {f"adapter.{k}": v for k, v in get_peft_model_state_dict(peft_model).items()}
    save_training(state, "checkpoint", step, {**tensors, "rng": torch.get_rng_state()}, opt, sched, stage)


def _load_checkpoint(state: RunState, peft_model: nn.Module, opt, sched, stage: dict[str, Any]) -> None:
    """Restore what ``_save_checkpoint`` saved for ``stage["step"]``."""
    from peft import set_peft_model_state_dict

    tensors = load_training(state, "checkpoint", opt, sched, stage)
    set_peft_model_state_dict(
        peft_model, {k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")}
    )
    torch.set_rng_state(tensors["rng"])


def _train(
    model: nn.Module, lora: LoRAConfig, windows: torch.Tensor, state: RunState, stage: dict[str, Any], progress: bool
) -> tuple[nn.Module, list[float]]:
    """Wrap ``model`` with the LoRA and train it on ``windows`` [steps * batch, seqlen], checkpointing in ``state``.

    ``stage`` is the committed progress record (``step`` > 0: continue from that checkpoint).
    """
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(model, peft_cfg)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lora.lr)
    sched = _schedule(opt, lora)
    step = stage.get("step", 0)
    if step:
        _load_checkpoint(state, pm, opt, sched, stage)
    losses: list[float] = stage.setdefault("losses", [])
    pm.train()
    device = next(pm.parameters()).device
    bar = tqdm(total=lora.steps, initial=step, desc="LoRA steps", unit="step", disable=not progress)
    while step < lora.steps:
        batch = windows[step * lora.batch_size : (step + 1) * lora.batch_size].to(device)
        loss = pm(input_ids=batch, labels=batch).loss
        if not math.isfinite(loss.item()):
            raise PTQ161Error(f"LoRA loss became {loss.item()} at step {step}; lower --lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, lora.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 5))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if step % lora.save_every == 0 or step == lora.steps:
            _save_checkpoint(state, pm, opt, sched, step, stage)
    bar.close()
    return pm, losses


def preprocess(
    model_spec: str,
    output: str | Path,
    *,
    recipe: str | Path | Recipe | None = None,
    lora: LoRAConfig | None = None,
    resume: bool = False,
    data_dir: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    trust_remote_code: bool = False,
) -> PreprocessResult:
    """Quantize ``model_spec``, train a restorative LoRA on it, merge and save a plain model directory.

    ``recipe`` is the first quantization pass (default: the ``demo`` recipe, as the ``cpu`` preset
    of this command); ``lora`` the adapter and its training. With ``resume=True`` an
    interrupted run in ``output`` continues from its last checkpoint. ``device`` / ``dtype``: where
    and in which dtype the model is quantized, trained and merged (the saved model keeps ``dtype``).
    ``verify`` checks the model's files against their recorded sha256 before reading them.
    ``trust_remote_code`` lets a model directory's own Python code run (refused otherwise).
    """
    lora = lora or LoRAConfig()
    recipe = resolve_recipe(recipe or "demo")
    out = Path(output)
    with output_lock(out):  # one run at a time per output directory
        check_output_dir(out, resume, meta=PREPROCESS_META)
        settings = {
            "model": model_spec,
            "recipe": {k: v for k, v in recipe.to_dict().items() if k not in ("name", "description")},
            "lora": lora.to_dict(),
            "dtype": str(dtype).removeprefix("torch."),
        }
        state = RunState(out, settings)
        t0 = time.perf_counter()
        stage = state.progress()
        if stage is not None:
            model, tok = load_model(
                model_spec, device=device, dtype=dtype, verify=verify, trust_remote_code=trust_remote_code
            )
            model.load_state_dict(state.load("quantized"), strict=False)
        else:
            res = quantize(
                model_spec,
                recipe,
                data_dir=data_dir,
                progress=progress,
                device=device,
                dtype=dtype,
                verify=verify,
                trust_remote_code=trust_remote_code,
            )
            model, tok = res.model, res.tokenizer
            first = {k: res.meta[k] for k in ("calibration_source", "seconds", "bits") if k in res.meta}
            state.save("quantized", _quantized_linears(model))
            stage = {"first_pass": first, "step": 0, "losses": []}
            state.commit(stage)

        windows, data_source = calibration_windows(
            lora.data, tok, nsamples=lora.steps * lora.batch_size, seqlen=lora.seqlen, seed=lora.seed, data_dir=data_dir
        )
        model.config.use_cache = False
        # LoRA init and dropout draw from torch's global RNG: seed it inside fork_rng so the
        # caller's RNG is untouched; its state is checkpointed with the adapter for resume
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(lora.seed)
            pm, losses = _train(model, lora, windows, state, stage, progress)
        pm.eval()
        merged = pm.merge_and_unload()
        merged.config.use_cache = True
        meta = {
            **settings,
            "device": str(device),
            "first_pass": stage["first_pass"],
            "lora_data_source": data_source,
            "losses": losses,
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(),
            "note": "a plain model directory (W_hat1 + alpha/r * B A): quantize it like any model",
        }
        with os_errors(out):
            merged.save_pretrained(out)
        tok.save_pretrained(out)
        remove_leftovers(out)  # temporary files of interrupted writes
        meta["files"] = manifest(out, skip=(PREPROCESS_META, STATE_DIR, LOCK_NAME))  # checked on load
        atomic_write_json(out / PREPROCESS_META, meta)
        state.remove()
        return PreprocessResult(merged, tok, out, meta)


def preset_settings(name: str) -> tuple[str, LoRAConfig]:
    """(the first pass's recipe name, LoRA config) of a preprocessing preset."""
    if name not in PREPROCESS_PRESETS:
        raise PTQ161Error(f"unknown preprocess preset '{name}'; choose from {', '.join(PREPROCESS_PRESETS)}")
    p = PREPROCESS_PRESETS[name]
    return p.recipe, LoRAConfig(steps=p.steps, seqlen=p.seqlen, warmup=p.warmup)
