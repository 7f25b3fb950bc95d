"""Quantized linear modules."""

from .packed import PackedPTQ161Linear

__all__ = ["PackedPTQ161Linear"]
