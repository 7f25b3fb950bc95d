"""Swap a model's modules in place: quantized linears -> packed modules, and back to dense.

This is the only place that replaces modules of a whole model (the transformers quantizer
builds empty packed modules before loading; see ``ptq161.models.hf_quantizer``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..methods import Method, Parts
from ..models import PTQ161HfConfig, get_adapter
from ..models.hf_quantizer import PACKED_FORMAT_VERSION
from ..nn import Int4Embedding, Int4Linear, Int8Embedding, Int8Linear, PackedPTQ161Linear, head_twin, tied_head_twin
from ..nn.heads import embedding_from_head, head_storage
from ..nn.int4 import int4_group_size


def pack_model_in_place(model: nn.Module, method: Method, parts: dict[str, Parts], head: str = "fp32") -> None:
    """Swap every quantized linear of ``model`` for ``method.packed_module`` of its parts.

    Records the packed layout in ``model.config.quantization_config`` so that the saved
    directory loads back through transformers. ``head`` ("int8", "int4") also stores the
    input embedding and the lm_head in that format (a tied head once; ``ptq161.nn.heads``).
    """
    record_packed_layout(model, method, pack_linears_in_place(model, method, parts))
    if head != "fp32":
        add_compact_head(model, head)


def pack_linears_in_place(model: nn.Module, method: Method, parts: dict[str, Parts]) -> dict[str, dict]:
    """Swap the linears named in ``parts`` for packed modules; -> their layout ``{path: {"n_salient": k}}``."""
    layers = {}
    for path, p in parts.items():
        lin = model.get_submodule(path)
        packed = method.packed_module(p, lin.bias.detach() if lin.bias is not None else None)
        model.set_submodule(path, packed)
        layers[path] = {"n_salient": packed.n_salient}
    return layers


def record_packed_layout(model: nn.Module, method: Method, layers: dict[str, dict]) -> None:
    """Write the packed layout into ``model.config.quantization_config`` (read back by the hf quantizer)."""
    model.config.quantization_config = PTQ161HfConfig(
        format_version=PACKED_FORMAT_VERSION, method=method.name, config=method.config.to_dict(), layers=layers
    )


def config_ties_head(model: nn.Module) -> bool:
    """Whether ``model``'s config ties its lm_head to its input embedding (one table)."""
    return bool(getattr(model.config, "tie_word_embeddings", False))


def head_is_tied(model: nn.Module) -> bool:
    """Whether ``model``'s lm_head is its input embedding: tied by its config and the same weight."""
    adapter = get_adapter(model)
    emb, lm = model.get_submodule(adapter.embed), model.get_submodule(adapter.lm_head)
    w_e, w_h = getattr(emb, "weight", None), getattr(lm, "weight", None)
    if not config_ties_head(model) or w_e is None or w_h is None or w_e.shape != w_h.shape:
        return False
    return w_e is w_h or (not w_e.is_meta and not w_h.is_meta and torch.equal(w_e, w_h))


def add_compact_head(model: nn.Module, head: str) -> None:
    """Store the input embedding and the lm_head of a packed model in format ``head`` (int8 / int4); a tied
    lm_head reads the compact embedding's tensors (stored once). ``int8-tied`` / ``int4-tied`` make the
    lm_head's table the embedding's as well (``ptq161.nn.heads``)."""
    adapter = get_adapter(model)
    fmt, force = head_storage(head)
    tied = force or head_is_tied(model)
    old_emb, lm = model.get_submodule(adapter.embed), model.get_submodule(adapter.lm_head)
    if force and not head_is_tied(model):
        emb = embedding_from_head(lm, fmt, old_emb.weight.dtype)
    else:
        emb = head_twin(old_emb, fmt)
    model.set_submodule(adapter.embed, emb)
    model.set_submodule(adapter.lm_head, tied_head_twin(emb, fmt) if tied else head_twin(lm, fmt))
    record_head_layout(model, fmt, tied)


def record_head_layout(model: nn.Module, head: str, tied: bool = False) -> None:
    """Record in the packed layout the format of the embedding and the lm_head (int8 / int4), and with
    ``tied`` that the lm_head reads the embedding's tensors (``tied_modules``; stored once).

    int4 records each module's group size (read from the module, so call it after the swap).
    """
    head, _ = head_storage(head)
    if head == "fp32":
        return
    adapter = get_adapter(model)
    model.config.tie_word_embeddings = False  # transformers' own tying knows only float weights
    paths = [adapter.lm_head, adapter.embed]
    q = model.config.quantization_config
    if head == "int8":
        q.int8_modules = paths
    else:
        q.int4_modules = {path: _group_size(model, path) for path in paths}
    q.tied_modules = {adapter.lm_head: adapter.embed} if tied else {}


def _group_size(model: nn.Module, path: str) -> int:
    """The int4 group size of module ``path``: the module's own, or (an unloaded one) the default for its rows."""
    mod = model.get_submodule(path)
    if isinstance(mod, Int4Linear | Int4Embedding):
        return mod.group_size
    return int4_group_size(mod.weight.shape[1])


def _dense_twin(mod: nn.Module, dtype: torch.dtype) -> nn.Module | None:
    """The plain ``nn.Linear`` / ``nn.Embedding`` (weights in ``dtype``, on the module's device) with the
    dequantized weight of a low-bit module (else None)."""
    if isinstance(mod, PackedPTQ161Linear | Int8Linear | Int4Linear):
        dense = nn.Linear(mod.in_features, mod.out_features, bias=getattr(mod, "bias", None) is not None)
        dense.weight = nn.Parameter(mod.dequantize().to(dtype), requires_grad=False)
        if dense.bias is not None:
            dense.bias = nn.Parameter(mod.bias.detach().to(dtype), requires_grad=False)
        return dense
    if isinstance(mod, Int8Embedding | Int4Embedding):
        return nn.Embedding.from_pretrained(mod.dequantize().to(dtype), freeze=True)
    return None


def dequantize_model_in_place(model: nn.Module) -> int:
    """Swap every packed / int8 / int4 module for a plain ``nn.Linear`` / ``nn.Embedding`` with its dequantized weight.

    Same numbers, dense speed: the packed modules' multi-token path multiplies by the same
    dequantized fp32 weights row tile by row tile, so scoring (lm-eval, perplexity) gives
    the same results up to float summation order. Meant for evaluation; the model keeps its
    ``quantization_config`` and must not be saved as a packed directory. Returns the number
    of modules swapped. The dense weights take the model's dtype and the modules' device.
    """
    dtype = getattr(model, "dtype", torch.float32)  # transformers: the dtype of its floating-point parameters
    swapped = 0
    for path, mod in list(model.named_modules()):
        dense = _dense_twin(mod, dtype)
        if dense is not None:
            model.set_submodule(path, dense)
            swapped += 1
    return swapped


__all__ = [
    "add_compact_head",
    "config_ties_head",
    "dequantize_model_in_place",
    "head_is_tied",
    "pack_linears_in_place",
    "pack_model_in_place",
    "record_head_layout",
    "record_packed_layout",
]
