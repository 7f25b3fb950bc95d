"""ptq161: extremely low-bit (~1.61 bits/weight) post-training quantization of LLMs."""

from .api import QuantizeResult, evaluate_perplexity, load, load_model, quantize
from .config import PRESETS, CalibConfig
from .hf_integration import register as _register_with_transformers

__version__ = "0.1.0"

_register_with_transformers()  # packed ptq161 directories load with AutoModelForCausalLM.from_pretrained

__all__ = [
    "PRESETS",
    "CalibConfig",
    "QuantizeResult",
    "__version__",
    "evaluate_perplexity",
    "load",
    "load_model",
    "quantize",
]
