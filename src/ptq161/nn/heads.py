"""The storage formats of a packed model's input embedding and lm_head ("heads").

fp32: the model's own modules (a tied head stays tied); int8: per-row symmetric int8
(``ptq161.nn.int8``); int4: grouped asymmetric 4-bit (``ptq161.nn.int4``). Both compact
formats untie a tied head (each gets its own twin).
"""

from __future__ import annotations

from torch import nn

from ..errors import PTQ161Error
from .int4 import Int4Embedding, Int4Linear
from .int8 import Int8Embedding, Int8Linear

HEAD_FORMATS = ("fp32", "int8", "int4")


def check_head_format(head: str) -> str:
    """``head`` if it is one of ``HEAD_FORMATS``, else a ``PTQ161Error``."""
    if head not in HEAD_FORMATS:
        raise PTQ161Error(f"unknown head format '{head}': choose one of {', '.join(HEAD_FORMATS)}")
    return head


def head_twin(mod: nn.Module, head: str) -> nn.Module:
    """The ``head``-format twin (quantized from its weight) of an ``nn.Embedding`` or a bias-free linear."""
    if check_head_format(head) == "fp32":
        return mod
    if isinstance(mod, nn.Embedding):
        return (Int8Embedding if head == "int8" else Int4Embedding).from_weight(mod.weight)
    return (Int8Linear if head == "int8" else Int4Linear).from_weight(mod.weight)


def empty_head_twin(mod: nn.Module, head: str, group_size: int = 0) -> nn.Module:
    """An empty ``head``-format twin of ``mod`` (same shapes) that a checkpoint's tensors then fill."""
    emb = isinstance(mod, nn.Embedding)
    if check_head_format(head) == "int8":
        if emb:
            return Int8Embedding(mod.num_embeddings, mod.embedding_dim)
        return Int8Linear(mod.in_features, mod.out_features)
    if head == "int4":
        if emb:
            return Int4Embedding(mod.num_embeddings, mod.embedding_dim, group_size)
        return Int4Linear(mod.in_features, mod.out_features, group_size)
    return mod


__all__ = ["HEAD_FORMATS", "check_head_format", "empty_head_twin", "head_twin"]
