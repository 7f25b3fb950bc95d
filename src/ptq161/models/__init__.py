"""Models: architecture adapters (data), loading, and the transformers quantizer for packed directories."""

from .adapters import ADAPTERS, Adapter, get_adapter, supported_architectures
from .hf_quantizer import PTQ161HfConfig, register
from .loading import load_model

__all__ = ["ADAPTERS", "Adapter", "PTQ161HfConfig", "get_adapter", "load_model", "register", "supported_architectures"]
