"""Models: architecture adapters (data), loading, and the transformers quantizer for packed directories."""

from .adapters import ADAPTERS, Adapter, get_adapter, supported_architectures
from .hf_quantizer import PTQ161HfConfig, register
from .lazy import LazyModel, parse_memory
from .loading import load_model, load_model_lazy, onloads

__all__ = [
    "ADAPTERS",
    "Adapter",
    "LazyModel",
    "PTQ161HfConfig",
    "get_adapter",
    "load_model",
    "load_model_lazy",
    "onloads",
    "parse_memory",
    "register",
    "supported_architectures",
]
