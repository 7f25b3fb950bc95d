"""The storage formats of a packed model's input embedding and lm_head ("heads").

fp32: the model's own modules (a tied head stays tied); int8: per-row symmetric int8
(``ptq161.nn.int8``); int4: grouped asymmetric 4-bit (``ptq161.nn.int4``). A tied head in a
compact format reads the compact embedding's tensors (``tie_head``): one copy in memory and in
the file, as the fp32 model keeps one table.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PTQ161Error
from .int4 import Int4Embedding, Int4Linear
from .int8 import Int8Embedding, Int8Linear
from .lowbit import share_buffers

# "-tied": one table, the lm_head's, serves the embedding too (for a model whose two tables are one table
# stored twice, e.g. a tied model converted from a GGUF file that quantized them differently)
HEAD_FORMATS = ("fp32", "int8", "int4", "int8-tied", "int4-tied")
TIE_SUFFIX = "-tied"


def check_head_format(head: str) -> str:
    """``head`` if it is one of ``HEAD_FORMATS``, else a ``PTQ161Error``."""
    if head not in HEAD_FORMATS:
        raise PTQ161Error(f"unknown head format '{head}': choose one of {', '.join(HEAD_FORMATS)}")
    return head


def head_storage(head: str) -> tuple[str, bool]:
    """(tensor format "fp32" / "int8" / "int4", whether the lm_head's table also serves as the embedding)."""
    check_head_format(head)
    return head.removesuffix(TIE_SUFFIX), head.endswith(TIE_SUFFIX)


def head_twin(mod: nn.Module, head: str) -> nn.Module:
    """The ``head``-format twin (quantized from its weight) of an ``nn.Embedding`` or a bias-free linear
    (a module already in format ``head`` is its own twin)."""
    if check_head_format(head) == "fp32":
        return mod
    compact = {"int8": (Int8Embedding, Int8Linear), "int4": (Int4Embedding, Int4Linear)}
    if isinstance(mod, compact[head]):
        return mod
    if isinstance(mod, compact["int8"] + compact["int4"]):
        raise PTQ161Error(f"a {type(mod).__name__} is already compact: it cannot be re-encoded as {head}")
    if isinstance(mod, nn.Embedding):
        return (Int8Embedding if head == "int8" else Int4Embedding).from_weight(mod.weight)
    return (Int8Linear if head == "int8" else Int4Linear).from_weight(mod.weight)


def tie_head(head: nn.Module, embedding: nn.Module) -> nn.Module:
    """Make the compact lm_head ``head`` (``Int8Linear`` / ``Int4Linear`` [V, d]) read the tensors of the
    compact ``embedding`` of the same format ([V, d]): no copy of its own, none stored. -> ``head``."""
    formats = ((Int8Linear, Int8Embedding), (Int4Linear, Int4Embedding))
    if not any(isinstance(head, h) and isinstance(embedding, e) for h, e in formats):
        raise PTQ161Error(
            f"cannot tie a {type(head).__name__} head to a {type(embedding).__name__} embedding (formats differ)"
        )
    share_buffers(head, embedding, head.STORED)
    return head


def embedding_from_head(head_mod: nn.Module, head: str, dtype: torch.dtype) -> nn.Module:
    """The ``head``-format ("int8" / "int4") embedding [V, d] whose table is the lm_head ``head_mod``'s
    (an ``nn.Linear`` [V, d], quantized as the lm_head would be, or a compact linear of that format, whose
    tensors it takes as they are); its rows come out in ``dtype``."""
    fmt = check_head_format(head)
    if isinstance(head_mod, Int8Linear | Int4Linear):
        if not isinstance(head_mod, Int8Linear if fmt == "int8" else Int4Linear):
            raise PTQ161Error(f"the lm_head is a {type(head_mod).__name__}: it cannot serve as an {fmt} embedding")
        with torch.device("meta"):
            if fmt == "int8":
                emb = Int8Embedding(head_mod.out_features, head_mod.in_features)
            else:
                emb = Int4Embedding(head_mod.out_features, head_mod.in_features, head_mod.group_size)
        for name in head_mod.STORED:
            emb.register_buffer(name, getattr(head_mod, name))
    else:
        emb = head_twin(nn.Embedding.from_pretrained(head_mod.weight.detach(), freeze=True), fmt)
    emb.out_dtype = torch.empty(0, dtype=dtype, device=getattr(emb, emb.STORED[0]).device)
    return emb


def tied_head_twin(embedding: nn.Module, head: str) -> nn.Module:
    """The ``head``-format lm_head of a model whose lm_head is its embedding: a linear [V, d] reading the
    compact ``embedding``'s tensors (``tie_head``); it quantizes nothing itself."""
    with torch.device("meta"):  # placeholders: the buffers become the embedding's at once
        if check_head_format(head) == "int8":
            twin = Int8Linear(embedding.embedding_dim, embedding.num_embeddings)
        elif head == "int4":
            twin = Int4Linear(embedding.embedding_dim, embedding.num_embeddings, embedding.group_size)
        else:
            raise PTQ161Error("an fp32 head stays the model's own tied module")
    return tie_head(twin, embedding)


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


__all__ = [
    "HEAD_FORMATS",
    "check_head_format",
    "embedding_from_head",
    "empty_head_twin",
    "head_storage",
    "head_twin",
    "tie_head",
    "tied_head_twin",
]
