"""Make packed ptq161 directories loadable by ``transformers.AutoModelForCausalLM.from_pretrained``.

Uses transformers' public extension points (``register_quantization_config`` and
``register_quantizer``): the quantizer swaps the listed linears for ``PackedPTQ161Linear``
before the weights load, so the packed tensors in ``model.safetensors`` fill their buffers.
Registration happens once, on ``import ptq161``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..errors import PTQ161Error
from ..nn import PackedPTQ161Linear, empty_head_twin, tie_head, tied_head_twin
from ..nn.packed import validate_lowbit_modules

QUANT_METHOD = "ptq161"
PACKED_FORMAT_VERSION = 1


class PTQ161HfConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a packed ptq161 directory.

    layers: {module path: {"n_salient": int}} for every packed linear; config: the method
    settings; format_version: the packed layout version this reader understands;
    int8_modules: the paths stored per-row int8; int4_modules: {path: group size} of the
    paths stored in grouped 4-bit (the embedding and lm_head, see ``ptq161.nn.heads``);
    tied_modules: {lm_head path: embedding path} when the head reads the embedding's tensors
    (a tied model's head, stored once).
    """

    def __init__(
        self,
        format_version: int = PACKED_FORMAT_VERSION,
        method: str = "ptq161",
        config: dict[str, Any] | None = None,
        layers: dict[str, dict[str, int]] | None = None,
        int8_modules: list[str] | None = None,
        int4_modules: dict[str, int] | None = None,
        tied_modules: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.method = method
        self.config = config or {}
        self.layers = layers or {}
        self.int8_modules = int8_modules or []
        self.int4_modules = int4_modules or {}
        self.tied_modules = tied_modules or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": self.format_version,
            "method": self.method,
            "config": self.config,
            "layers": self.layers,
            "int8_modules": self.int8_modules,
            "int4_modules": self.int4_modules,
            "tied_modules": self.tied_modules,
        }


class PTQ161HfQuantizer(HfQuantizer):
    """Loads pre-quantized (packed) ptq161 models; quantizing on the fly needs calibration and is refused."""

    requires_calibration = True

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        version = self.quantization_config.format_version
        if version != PACKED_FORMAT_VERSION:
            raise PTQ161Error(
                f"packed format version {version} is not supported (this ptq161 reads {PACKED_FORMAT_VERSION})"
            )

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> None:
        q = self.quantization_config
        replace_with_packed(model, q.layers, q.int8_modules, q.int4_modules, q.tied_modules)

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        tie_heads(model, self.quantization_config.tied_modules)  # the loaded embedding's tensors
        validate_lowbit_modules(model)  # indices, zero points, finite factors: before any kernel runs
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def replace_with_packed(
    model: nn.Module,
    layers: dict[str, dict[str, int]],
    int8_modules: list[str],
    int4_modules: dict[str, int] | None = None,
    tied_modules: dict[str, str] | None = None,
) -> None:
    """Swap each listed linear for an empty ``PackedPTQ161Linear`` and each int8 / int4 module (embedding,
    lm_head) for its empty twin (int4: ``{path: group size}``); a head in ``tied_modules`` ({head: embedding})
    becomes a twin reading the embedding twin's tensors (``tie_heads`` again once they are loaded)."""
    for path, info in layers.items():
        lin = model.get_submodule(path)
        model.set_submodule(
            path, PackedPTQ161Linear(lin.in_features, lin.out_features, int(info["n_salient"]), lin.bias is not None)
        )
    heads = {path: ("int8", 0) for path in int8_modules}
    heads |= {path: ("int4", int(group)) for path, group in (int4_modules or {}).items()}
    tied = tied_modules or {}
    for path, (fmt, group) in heads.items():
        if path not in tied:
            model.set_submodule(path, empty_head_twin(model.get_submodule(path), fmt, group))
    for path, source in tied.items():
        if path not in heads or source not in heads or heads[path] != heads[source]:
            raise PTQ161Error(f"tied module '{path}' and its source '{source}' are not stored in one compact format")
        model.set_submodule(path, tied_head_twin(model.get_submodule(source), heads[path][0]))
    if heads:
        model.config.tie_word_embeddings = False


def tie_heads(model: nn.Module, tied_modules: dict[str, str]) -> None:
    """Point each head of ``tied_modules`` ({head path: embedding path}) at its embedding's current tensors."""
    for path, source in tied_modules.items():
        tie_head(model.get_submodule(path), model.get_submodule(source))


def register(quantizer: type[PTQ161HfQuantizer] = PTQ161HfQuantizer) -> None:
    """Register the config and ``quantizer`` with transformers (idempotent: the first registration stays;
    ``import ptq161`` registers ``ptq161.runtime.hf_decoding.EngineHfQuantizer``, whose models generate on
    the fused engine)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(PTQ161HfConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(quantizer)
