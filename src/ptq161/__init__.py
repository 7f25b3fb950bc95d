"""ptq161: extremely low-bit (~1.61 bits/weight) post-training quantization of LLMs."""

from ._version import __version__
from .api import (
    LoRAConfig,
    PreprocessResult,
    QuantizeResult,
    Recipe,
    convert,
    evaluate_perplexity,
    load,
    load_model,
    preprocess,
    quantize,
    recipe_names,
    resolve_recipe,
)
from .config import CalibConfig
from .methods.ptq161 import PTQ161Config
from .models import register as _register_with_transformers
from .pipeline.e2e import E2EConfig
from .runtime.hf_decoding import EngineHfQuantizer, engine_decoding

# packed ptq161 directories load with AutoModelForCausalLM.from_pretrained and generate on the fused engine
_register_with_transformers(EngineHfQuantizer)

__all__ = [
    "CalibConfig",
    "E2EConfig",
    "LoRAConfig",
    "PTQ161Config",
    "PreprocessResult",
    "QuantizeResult",
    "Recipe",
    "__version__",
    "convert",
    "engine_decoding",
    "evaluate_perplexity",
    "load",
    "load_model",
    "preprocess",
    "quantize",
    "recipe_names",
    "resolve_recipe",
]
