"""Bit packing and (later) the packed artifact format and kernels."""

from .bits import pack_bits, pack_nibbles, unpack_bits, unpack_nibbles

__all__ = ["pack_bits", "pack_nibbles", "unpack_bits", "unpack_nibbles"]
