"""Model loading and architecture adapters."""

from .adapters import ADAPTERS, Adapter, get_adapter, supported_architectures
from .loading import load_model

__all__ = ["ADAPTERS", "Adapter", "get_adapter", "load_model", "supported_architectures"]
