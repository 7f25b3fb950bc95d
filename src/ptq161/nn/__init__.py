"""Quantized modules that replace ``nn.Linear`` / ``nn.Embedding``: packed PTQ1.61 and int8."""

from .int8 import Int8Embedding, Int8Linear
from .packed import PackedPTQ161Linear

__all__ = ["Int8Embedding", "Int8Linear", "PackedPTQ161Linear"]
