"""Quantized modules that replace ``nn.Linear`` / ``nn.Embedding``: packed PTQ1.61, int8 and grouped int4."""

from .heads import HEAD_FORMATS, check_head_format, empty_head_twin, head_twin, tie_head, tied_head_twin
from .int4 import Int4Embedding, Int4Linear
from .int8 import Int8Embedding, Int8Linear
from .packed import PackedPTQ161Linear, PTQ161Parts

__all__ = [
    "HEAD_FORMATS",
    "Int4Embedding",
    "Int4Linear",
    "Int8Embedding",
    "Int8Linear",
    "PTQ161Parts",
    "PackedPTQ161Linear",
    "check_head_format",
    "empty_head_twin",
    "head_twin",
    "tie_head",
    "tied_head_twin",
]
