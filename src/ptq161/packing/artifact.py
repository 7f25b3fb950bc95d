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

from ..hf_integration import PACKED_FORMAT_VERSION, PTQ161HfConfig
from ..methods.base import Parts
from ..nn.packed import PackedPTQ161Linear


def pack_model_in_place(model: nn.Module, parts: dict[str, Parts], method_config: dict[str, Any]) -> None:
    """Swap every quantized linear of ``model`` for a ``PackedPTQ161Linear`` built from its parts."""
    layers = {}
    for path, p in parts.items():
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        lin = getattr(parent, name)
        packed = PackedPTQ161Linear.from_parts(p, lin.bias.detach() if lin.bias is not None else None)
        setattr(parent, name, packed)
        layers[path] = {"n_salient": packed.n_salient}
    model.config.quantization_config = PTQ161HfConfig(
        format_version=PACKED_FORMAT_VERSION, method="ptq161", config=method_config, layers=layers
    )


def save_packed(model: nn.Module, tokenizer: Any, path: Path) -> None:
    """Save a packed model (see module docstring) and its tokenizer into ``path``."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
