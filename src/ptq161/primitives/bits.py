"""Bit packing primitives: 8 sign bits per byte, two 4-bit codes per byte (row-major, per row)."""

from __future__ import annotations

import torch


def _bit_weights(device: torch.device) -> torch.Tensor:
    # built per call with an explicit device: a module-level tensor would be created on the
    # meta device when this module is first imported inside transformers' empty-weights context
    return torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [m, k] -> uint8 [m, ceil(k / 8)]; bit t of byte j holds column 8 j + t."""
    m, k = bits.shape
    pad = (-k) % 8
    b = torch.nn.functional.pad(bits.to(torch.uint8), (0, pad)).reshape(m, -1, 8)
    return (b * _bit_weights(b.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [m, ceil(k / 8)] -> bool [m, k] (inverse of ``pack_bits``)."""
    m = packed.shape[0]
    bits = (packed.unsqueeze(-1) & _bit_weights(packed.device)) != 0
    return bits.reshape(m, -1)[:, :k]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [m, k] with values < 16 -> uint8 [m, ceil(k / 2)]; low nibble = even column."""
    m, k = codes.shape
    c = torch.nn.functional.pad(codes, (0, k % 2)).reshape(m, -1, 2)
    return c[..., 0] | (c[..., 1] << 4)


def unpack_nibbles(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [m, ceil(k / 2)] -> uint8 [m, k] (inverse of ``pack_nibbles``)."""
    m = packed.shape[0]
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(m, -1)[:, :k]
