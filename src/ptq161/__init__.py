"""ptq161: extremely low-bit (~1.61 bits/weight) post-training quantization of LLMs."""

from ._version import __version__
from .api import (
    LoRAConfig,
    PreprocessResult,
    QuantizeResult,
    convert,
    evaluate_perplexity,
    load,
    load_model,
    preprocess,
    quantize,
)
from .config import PRESETS, CalibConfig
from .models import register as _register_with_transformers

_register_with_transformers()  # packed ptq161 directories load with AutoModelForCausalLM.from_pretrained

__all__ = [
    "PRESETS",
    "CalibConfig",
    "LoRAConfig",
    "PreprocessResult",
    "QuantizeResult",
    "__version__",
    "convert",
    "evaluate_perplexity",
    "load",
    "load_model",
    "preprocess",
    "quantize",
]
