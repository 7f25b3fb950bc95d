"""Quantization methods: the explicit table of every method the block-wise driver runs."""

from ..errors import PTQ161Error
from .arb import ARB
from .awq import AWQ
from .base import BlockContext, BlockResult, LayerBits, Method, MethodConfig, Parts
from .billm import BiLLM
from .gptq import GPTQ
from .omniquant import OmniQuant
from .pbllm import PBLLM
from .ptq161 import PTQ161
from .rtn import RTN

METHODS: dict[str, type[Method]] = {
    "ptq161": PTQ161,
    "rtn": RTN,
    "gptq": GPTQ,
    "awq": AWQ,
    "omniquant": OmniQuant,
    "pbllm": PBLLM,
    "billm": BiLLM,
    "arb": ARB,
}


def get_method(name: str) -> type[Method]:
    """The method class called ``name`` or a one-line error listing the choices."""
    if name not in METHODS:
        raise PTQ161Error(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "BlockContext", "BlockResult", "LayerBits", "Method", "MethodConfig", "Parts", "get_method"]
