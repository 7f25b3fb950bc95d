"""Quantization methods; each registers itself with the block-wise driver."""

from .base import METHODS, BlockContext, BlockResult, Method, MethodConfig, get_method, register_method

__all__ = ["METHODS", "BlockContext", "BlockResult", "Method", "MethodConfig", "get_method", "register_method"]
