"""Models: architecture adapters (data), loading, and the transformers quantizer for packed directories."""

from .adapters import ADAPTERS, Adapter, get_adapter, supported_architectures
from .hf_quantizer import PTQ161HfConfig, register
from .lazy import LazyModel, parse_memory
from .loading import load_model, load_model_lazy, load_model_placed, onloads, placement_for
from .placed import PLACEMENTS, PlacedModel

__all__ = [
    "ADAPTERS",
    "PLACEMENTS",
    "Adapter",
    "LazyModel",
    "PTQ161HfConfig",
    "PlacedModel",
    "get_adapter",
    "load_model",
    "load_model_lazy",
    "load_model_placed",
    "onloads",
    "parse_memory",
    "placement_for",
    "register",
    "supported_architectures",
]
