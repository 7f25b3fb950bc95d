"""ptq161: extremely low-bit (~1.61 bits/weight) post-training quantization of LLMs."""

__version__ = "0.1.0"

from .api import evaluate_perplexity, load_model

__all__ = ["__version__", "evaluate_perplexity", "load_model"]
