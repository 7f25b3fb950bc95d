"""What a model computes beyond its layout, against what the fused decode engine implements.

The engine implements one computation (``ENGINE``). ``describe`` fills a ``Computation`` from a
model's config and modules (norms probed numerically, the embedding's scale measured through the
model's own forward) and ``engine_mismatches`` lists every field in which the model differs, so that
a model the engine would decode wrongly is refused with its reasons before the engine is built.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..calibration.capture import capture_block_inputs, module_device
from ..models.adapters import LLAMA_LIKE, Adapter

# config keys that scale or cap something on the way through the model; 1.0 / None mean "off"
MULTIPLIER_KEYS = (
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
    "logit_scale",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "scale_emb",
    "scale_depth",
)
LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")  # pre-norm: before attention, before the MLP


@dataclass(frozen=True)
class Computation:
    """The computation of a decoder-only model as the fused engine sees it (``describe``)."""

    model_type: str
    layout: str  # "llama": q/k/v/o under self_attn and gate/up/down under mlp; else "other"
    norm: str  # "rms": w * x / rms(x); "rms+1": (1 + w) * x / rms(x); "layer": LayerNorm; else its class
    layer_norms: tuple[str, ...]  # the norms directly in a decoder layer (placement: pre-norm is LLAMA_NORMS)
    qk_norm: str  # norms on queries / keys: "none"; "per-head rms" (Qwen3: w [head_dim] per head); else "other"
    biases: tuple[str, ...]  # the decoder linears with a bias (the engine adds any)
    rotary: str  # "full"; "partial"; "per layer type"; "NoPE layers"; "dynamic"; "none"
    activation: str
    attention_scale: float  # the attention's scaling x sqrt(head_dim): 1.0 is softmax(q k / sqrt(head_dim))
    sliding_window: int | None
    multipliers: tuple[tuple[str, float], ...]  # config scales and caps that are on
    embed_scale: float  # the first layer's input / the embedding row (1.0: none)
    tied_head: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _norm_kind(norm: nn.Module | None) -> str:
    """The formula of a norm module, probed on a fixed vector: "rms", "rms+1", "layer" or its class name."""
    if norm is None:
        return "none"
    if isinstance(norm, nn.LayerNorm):
        return "layer"
    weight = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if not isinstance(weight, torch.Tensor) or weight.is_meta or eps is None or weight.dim() != 1:
        return type(norm).__name__
    x = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    with torch.no_grad():
        y = norm(x).float()
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    w = weight.detach().float()
    for kind, expected in (("rms", w * normed), ("rms+1", (1 + w) * normed)):
        if torch.allclose(y, expected, rtol=1e-3, atol=1e-4):
            return kind
    return type(norm).__name__


def _qk_norm(attn: nn.Module | None, head_dim: int) -> str:
    """The attention's query / key norms: "none", "per-head rms" (RMSNorm over each head's head_dim
    values, its weight [head_dim], as Qwen3) or "other" (e.g. OLMo 2's over the whole projection)."""
    norms = {n: m for n, m in attn.named_children() if "norm" in type(m).__name__.lower()} if attn else {}
    if not norms:
        return "none"
    q, k = norms.get("q_norm"), norms.get("k_norm")
    per_head = [m for m in (q, k) if m is not None and getattr(m, "weight", None) is not None]
    if len(norms) == 2 and len(per_head) == 2 and all(m.weight.shape == (head_dim,) for m in per_head):
        if all(_norm_kind(m) == "rms" for m in per_head):
            return "per-head rms"
    return "other"


def _rotary(config: Any) -> str:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and rope and all(isinstance(v, dict) for v in rope.values()):
        return "per layer type"
    no_rope = getattr(config, "no_rope_layers", None)
    if no_rope and not all(no_rope):
        return "NoPE layers"
    factor = getattr(config, "partial_rotary_factor", None) or (rope.get("partial_rotary_factor") if rope else None)
    if factor not in (None, 1, 1.0):
        return "partial"
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) == "dynamic":
        return "dynamic"
    return "full"


def _sliding_window(config: Any) -> int | None:
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


@torch.no_grad()
def _embed_scale(model: nn.Module, adapter: Adapter) -> float:
    """The first decoder layer's input over the embedding row for one token, through the model's own
    forward (the layers are not run): 1.0 when the model feeds the embedding as it is."""
    embed = model.get_submodule(adapter.embed)
    ids = torch.tensor([[1]], device=module_device(embed))
    x, _ = capture_block_inputs(model, adapter, ids)
    row = embed(ids).float()
    denom = row.norm().item()
    return x.float().norm().item() / denom if denom else 1.0


def describe(model: nn.Module, adapter: Adapter) -> Computation:
    """The ``Computation`` of ``model`` (weights loaded), from its config and modules."""
    cfg = model.config
    layers = adapter.decoder_layers(model)
    first = layers[0]
    names = {n for n, _ in first.named_modules()}
    layout = "llama" if all(n in names for n in LLAMA_LIKE.linear_names) else "other"
    direct = tuple(sorted(n for n, m in first.named_children() if "norm" in type(m).__name__.lower()))
    norm_mod = next((first.get_submodule(n) for n in direct), None)
    attn = getattr(first, "self_attn", None)
    qk_norm = _qk_norm(attn, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    biases = tuple(
        n for n, m in first.named_modules() if isinstance(getattr(m, "bias", None), torch.Tensor) and "norm" not in n
    )
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    scaling = getattr(attn, "scaling", None) if attn is not None else None
    attention_scale = float(scaling) * math.sqrt(head_dim) if isinstance(scaling, (int, float)) else 1.0
    multipliers = tuple(
        (k, float(v)) for k in MULTIPLIER_KEYS if (v := getattr(cfg, k, None)) is not None and float(v) != 1.0
    )
    return Computation(
        model_type=getattr(cfg, "model_type", type(model).__name__),
        layout=layout,
        norm=_norm_kind(norm_mod),
        layer_norms=direct,
        qk_norm=qk_norm,
        biases=biases,
        rotary=_rotary(cfg) if adapter.rotary is not None else "none",
        activation=str(getattr(cfg, "hidden_act", None) or getattr(cfg, "hidden_activation", "?")),
        attention_scale=round(attention_scale, 6),
        sliding_window=_sliding_window(cfg),
        multipliers=multipliers,
        embed_scale=round(_embed_scale(model, adapter), 6),
        tied_head=bool(getattr(cfg, "tie_word_embeddings", False)),
    )


@dataclass(frozen=True)
class EngineSpec:
    """The computation the fused decode engine implements (``runtime.engine``)."""

    model_types: tuple[str, ...]  # families whose forward the engine is tested against, token for token
    layout: str = "llama"
    norm: str = "rms"
    layer_norms: tuple[str, ...] = LLAMA_NORMS
    qk_norms: tuple[str, ...] = ("none", "per-head rms")
    rotary: str = "full"
    activation: str = "silu"
    attention_scale: float = 1.0
    embed_scale: float = 1.0


ENGINE = EngineSpec(model_types=("llama", "qwen2", "qwen3", "mistral"))


def engine_mismatches(comp: Computation, max_len: int, spec: EngineSpec = ENGINE) -> list[str]:
    """Every way ``comp`` differs from what the engine computes for ``max_len`` positions (empty: served),
    each as "what the model has (engine: what it implements)"."""
    out = []
    if comp.layout != spec.layout:
        out.append(f"layout {comp.layout} (engine: {spec.layout})")
    if comp.norm != spec.norm:
        out.append(f"norm {comp.norm} (engine: {spec.norm}, w * x / rms(x))")
    if comp.layer_norms != spec.layer_norms:
        out.append(f"norm placement {', '.join(comp.layer_norms) or 'none'} (engine: {', '.join(spec.layer_norms)})")
    if comp.qk_norm not in spec.qk_norms:
        out.append(f"q/k norm {comp.qk_norm} (engine: {' or '.join(spec.qk_norms)})")
    if comp.rotary != spec.rotary:
        out.append(f"rotary {comp.rotary} (engine: {spec.rotary})")
    if comp.activation != spec.activation:
        out.append(f"activation {comp.activation} (engine: {spec.activation})")
    for name in ("attention_scale", "embed_scale"):
        if not math.isclose(getattr(comp, name), getattr(spec, name), rel_tol=1e-4):
            out.append(f"{name.replace('_', ' ')} {getattr(comp, name):g} (engine: {getattr(spec, name):g})")
    if comp.sliding_window is not None and comp.sliding_window < max_len:
        out.append(f"sliding window of {comp.sliding_window} tokens (engine: full attention over {max_len})")
    if comp.multipliers:
        out.append("multipliers " + ", ".join(f"{k}={v:g}" for k, v in comp.multipliers) + " (engine: none)")
    if not out and comp.model_type not in spec.model_types:
        out.append(f"model type {comp.model_type} (engine tested on {', '.join(spec.model_types)})")
    return out


__all__ = ["ENGINE", "Computation", "EngineSpec", "describe", "engine_mismatches"]
