"""Write PTQ1.61 results as packed model directories (real ~1.6-bit files).

The directory is a Hugging Face model folder: ``config.json`` carries a
``quantization_config`` (quant_method "ptq161", format version, method settings and the
salient-channel count of every packed layer), ``model.safetensors`` holds the packed
buffers of every quantized linear (sign bits, 4-bit codes, fp16 factors, column indices)
and the unquantized tensors (embeddings, norms, lm_head). It loads with ``ptq161.load``
or, after ``import ptq161``, ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..hf_integration import PACKED_FORMAT_VERSION, PTQ161HfConfig, set_module
from ..methods.base import Parts
from ..models.adapters import get_adapter
from ..nn.int8 import Int8Embedding, Int8Linear
from ..nn.packed import PackedPTQ161Linear


def pack_model_in_place(
    model: nn.Module, parts: dict[str, Parts], method_config: dict[str, Any], int8_head: bool = False
) -> None:
    """Swap every quantized linear of ``model`` for a ``PackedPTQ161Linear`` built from its parts.

    ``int8_head`` also stores the input embedding and the lm_head as per-row int8 (untied).
    """
    layers = {}
    for path, p in parts.items():
        lin = model.get_submodule(path)
        packed = PackedPTQ161Linear.from_parts(p, lin.bias.detach() if lin.bias is not None else None)
        set_module(model, path, packed)
        layers[path] = {"n_salient": packed.n_salient}
    model.config.quantization_config = PTQ161HfConfig(
        format_version=PACKED_FORMAT_VERSION, method="ptq161", config=method_config, layers=layers
    )
    if int8_head:
        add_int8_head(model)


def add_int8_head(model: nn.Module) -> None:
    """Store the input embedding and the lm_head of a packed model as per-row int8 (untied)."""
    adapter = get_adapter(model)
    head, embed = model.get_submodule(adapter.lm_head), model.get_submodule(adapter.embed)
    set_module(model, adapter.lm_head, Int8Linear.from_weight(head.weight))
    set_module(model, adapter.embed, Int8Embedding.from_weight(embed.weight))
    model.config.tie_word_embeddings = False
    model.config.quantization_config.int8_modules = [adapter.lm_head, adapter.embed]


def save_packed(model: nn.Module, tokenizer: Any, path: Path) -> None:
    """Save a packed model (see module docstring) and its tokenizer into ``path``."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def dequantize_model_in_place(model: nn.Module) -> int:
    """Swap every packed / int8 module for a plain ``nn.Linear`` / ``nn.Embedding`` with its dequantized weight.

    Same numbers, dense speed: the packed modules' multi-token path multiplies by the same
    dequantized fp32 weights row tile by row tile, so scoring (lm-eval, perplexity) gives
    the same results up to float summation order. Meant for evaluation; the model keeps its
    ``quantization_config`` and must not be saved as a packed directory. Returns the number
    of modules swapped.
    """
    swapped = 0
    for path, mod in list(model.named_modules()):
        if isinstance(mod, PackedPTQ161Linear | Int8Linear):
            dense = nn.Linear(mod.in_features, mod.out_features, bias=getattr(mod, "bias", None) is not None)
            dense.weight = nn.Parameter(mod.dequantize().float(), requires_grad=False)
            if dense.bias is not None:
                dense.bias = nn.Parameter(mod.bias.detach().float(), requires_grad=False)
        elif isinstance(mod, Int8Embedding):
            w = mod.weight_int8.float() * mod.scale.float()[:, None]
            dense = nn.Embedding.from_pretrained(w, freeze=True)
        else:
            continue
        set_module(model, path, dense)
        swapped += 1
    return swapped
