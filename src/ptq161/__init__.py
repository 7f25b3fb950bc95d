"""ptq161: extremely low-bit (~1.61 bits/weight) post-training quantization of LLMs."""

__version__ = "0.1.0"

from .api import QuantizeResult, evaluate_perplexity, load_model, quantize
from .config import PRESETS, CalibConfig

__all__ = ["PRESETS", "CalibConfig", "QuantizeResult", "__version__", "evaluate_perplexity", "load_model", "quantize"]
