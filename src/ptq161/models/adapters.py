"""Architecture adapters: where the decoder layers, norms and linears of a model live.

An adapter is data, not code: a handful of attribute paths. Every method and the
block-wise driver reach into a model only through an adapter, so a new architecture
that shares the LLaMA layout needs one line in ``ADAPTERS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import UnsupportedModelError
from ..nn import PackedPTQ161Linear


@dataclass(frozen=True)
class Adapter:
    """Where the parts of a decoder-only causal LM are.

    ``linear_groups`` lists the block's linear layers (paths relative to a decoder
    layer) grouped by shared input: layers in one group see the same activations, so
    they share activation statistics. ``scale_absorbers`` names, for a group, the module
    just before it that can absorb a per-channel scale of the group's input (AWQ).
    """

    name: str
    architectures: tuple[str, ...]
    layers: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str | None = "model.rotary_emb"
    linear_groups: tuple[tuple[str, ...], ...] = (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("self_attn.o_proj",),
        ("mlp.gate_proj", "mlp.up_proj"),
        ("mlp.down_proj",),
    )
    # group's first linear -> the module whose output is that group's input and can absorb a
    # per-input-channel scale (a norm's weight, or a linear's output rows): AWQ scales only these
    scale_absorbers: tuple[tuple[str, str], ...] = (
        ("self_attn.q_proj", "input_layernorm"),
        ("self_attn.o_proj", "self_attn.v_proj"),
        ("mlp.gate_proj", "post_attention_layernorm"),
        ("mlp.down_proj", "mlp.up_proj"),
    )

    @property
    def linear_names(self) -> tuple[str, ...]:
        """All linear paths of one decoder layer, in execution order."""
        return tuple(n for group in self.linear_groups for n in group)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The model's list of decoder layers."""
        return model.get_submodule(self.layers)  # type: ignore[return-value]

    def block_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """The linear layers of one decoder layer, keyed by their path in the layer."""
        return {n: block.get_submodule(n) for n in self.linear_names}  # type: ignore[misc]

    def model_linears(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every decoder linear of ``model``, keyed by its full module path (``model.layers.3.mlp.up_proj``)."""
        return {
            f"{self.layers}.{i}.{name}": lin
            for i, block in enumerate(self.decoder_layers(model))
            for name, lin in self.block_linears(block).items()
        }


LLAMA_LIKE = Adapter(
    name="llama",
    architectures=("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"),
)

ADAPTERS: tuple[Adapter, ...] = (LLAMA_LIKE,)


def supported_architectures() -> list[str]:
    """Names of the architectures with an explicit adapter."""
    return sorted(a for ad in ADAPTERS for a in ad.architectures)


def _matches(adapter: Adapter, model: nn.Module) -> bool:
    try:
        layers = adapter.decoder_layers(model)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            return False
        linear_types = (nn.Linear, PackedPTQ161Linear)
        return all(isinstance(m, linear_types) for m in adapter.block_linears(layers[0]).values())
    except AttributeError:
        return False


def _path_of(model: nn.Module, target: nn.Module | None) -> str | None:
    """The dotted path of submodule ``target`` in ``model`` (None when absent)."""
    if target is None:
        return None
    return next((path for path, mod in model.named_modules() if mod is target), None)


def discover_adapter(model: nn.Module) -> Adapter | None:
    """Generic fallback: find the decoder-layer list, its linears, the embedding, final norm and head.

    The decoder-layer class is taken from ``model._no_split_modules`` (as transformers
    declares it); each linear (dense or already packed) becomes its own group (statistics are
    then computed per layer, which is correct, just not shared). The embedding and the head
    are the modules transformers returns from ``get_input_embeddings`` /
    ``get_output_embeddings``; the final norm is the last norm outside the layers; the rotary
    embedding, if any, the module outside the layers whose class says so. None when one of
    them cannot be found.
    """
    classes = set(getattr(model, "_no_split_modules", None) or [])
    linear_types = (nn.Linear, PackedPTQ161Linear)
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and type(mod[0]).__name__ in classes:
            linears = tuple(n for n, m in mod[0].named_modules() if isinstance(m, linear_types))
            embed = _path_of(model, model.get_input_embeddings())
            head = _path_of(model, model.get_output_embeddings())
            outside = [(p, type(m).__name__.lower()) for p, m in model.named_modules() if p and p.split(".")[0] != ""]
            outside = [(p, cls) for p, cls in outside if p != path and not p.startswith(path + ".")]
            norms = [p for p, cls in outside if "norm" in cls]
            rotary = next((p for p, cls in outside if "rotary" in cls), None)
            causal = [m.is_causal for m in mod[0].modules() if isinstance(getattr(m, "is_causal", None), bool)]
            if causal and not any(causal):  # an encoder's bidirectional attention (e.g. BERT as BertLMHeadModel)
                return None
            if not linears or embed is None or head is None or not norms:
                return None
            return Adapter(
                name="discovered",
                architectures=tuple(getattr(model.config, "architectures", None) or ()),
                layers=path,
                embed=embed,
                final_norm=norms[-1],
                lm_head=head,
                rotary=rotary,
                linear_groups=tuple((n,) for n in linears),
                scale_absorbers=(),
            )
    return None


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``; raises ``UnsupportedModelError`` listing what is supported."""
    archs = set(getattr(getattr(model, "config", None), "architectures", None) or ())
    archs.add(type(model).__name__)
    for adapter in ADAPTERS:
        if archs & set(adapter.architectures) and _matches(adapter, model):
            return adapter
    found = discover_adapter(model)
    if found is not None and _matches(found, model):
        return found
    raise UnsupportedModelError(
        f"unsupported model architecture {sorted(archs)}; supported: "
        + ", ".join(supported_architectures())
        + " (and decoder-only models with causal attention whose layers transformers lists in _no_split_modules)"
    )
