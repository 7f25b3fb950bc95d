"""Block onloading: a model whose decoder layers stay unmaterialised until they are needed.

For models larger than the memory budget (``--max-memory``): the skeleton is built on the
``meta`` device (no weights), the embedding, final norm, lm_head and rotary table are
loaded, and each decoder layer is loaded from the safetensors files when the block-wise
driver or the block-wise perplexity loop reaches it, then released before the next one.
Peak memory is then about the embedding and head plus one layer plus the activations.
(For several GPUs or a GPU smaller than the model, transformers' ``device_map`` and
accelerate's offloading do the placement; this module is the CPU-RAM case.)
"""

from __future__ import annotations

import ctypes
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..errors import PTQ161Error, check_finite
from ..nn.heads import tie_head
from ..nn.packed import validate_lowbit_modules
from ..utils import current_rss_bytes
from .adapters import Adapter, get_adapter

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30, "T": 2**40}
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}


def parse_memory(text: str) -> int:
    """``"3GB"``, ``"2.5G"``, ``"512MiB"``, ``"1e9"`` -> bytes (binary units); ``PTQ161Error`` otherwise."""
    t = text.strip().upper().replace("IB", "B").replace(" ", "")
    num = t.rstrip("KMGTB")
    unit = t[len(num) :]
    try:
        value = float(num)
    except ValueError:
        value = -1.0
    if unit not in _UNITS or value <= 0:
        raise PTQ161Error(f"cannot read the memory size '{text}': give e.g. 3GB, 2.5G or 512MB")
    return int(value * _UNITS[unit])


def available_memory() -> int:
    """Bytes of RAM this process can use now: MemAvailable of /proc/meminfo, else the physical RAM."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def tensor_info(file: str | Path) -> dict[str, tuple[int, str]]:
    """``{name: (number of elements, safetensors dtype)}`` of one safetensors file, from its header."""
    out = {}
    try:
        with safe_open(str(file), "pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                numel = 1
                for d in sl.get_shape():
                    numel *= d
                out[k] = (numel, sl.get_dtype())
    except Exception as e:  # safetensors raises its own error types for damaged files
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise PTQ161Error(f"{file} is unreadable: {first}") from None
    return out


def _libc_malloc_trim():
    """glibc's ``malloc_trim`` (a C function), or None on other C libraries."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 2**20  # allocations from this size up are mapped, and unmapped when freed


def bound_heap_growth(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve every allocation of ``threshold`` bytes or more by its own mapping, released when freed
    (glibc ``mallopt(M_MMAP_THRESHOLD)``); False (nothing done) on other C libraries.

    By default glibc raises its mmap threshold each time a mapped chunk is freed (up to 32 MB):
    from then on activations and weight tiles of a few MB come from the heap, and the freed
    ones stay in the process's RSS (on a packed 1.5B model the peak of one perplexity window
    nearly doubled; benchmarks/results/large_model.md). Process-wide, so only the command line calls it, when a
    memory budget is given (``--max-memory``): every large allocation then costs a mapping.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def return_freed_memory() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Onloading frees a block's tensors and allocates the next one's; glibc keeps freed chunks
    under its dynamic mmap threshold (up to 32 MB) in the heap, so without this the process's
    RSS grows with every block onloaded; with it, it stays flat.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class SafetensorsDir:
    """The tensors of a model directory (``model.safetensors`` or shards with an index), read by name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = dict(json.loads(index.read_text())["weight_map"])
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                raise PTQ161Error(f"{index} is damaged (not a safetensors index)") from None
        elif (self.path / "model.safetensors").is_file():
            try:
                with safe_open(str(self.path / "model.safetensors"), "pt") as f:
                    weight_map = dict.fromkeys(f.keys(), "model.safetensors")
            except Exception as e:  # safetensors raises its own error types for damaged files
                first = str(e).splitlines()[0]
                raise PTQ161Error(f"{self.path / 'model.safetensors'} is unreadable: {first}") from None
        else:
            raise PTQ161Error(f"{self.path} holds no safetensors weights (block onloading reads safetensors only)")
        self.weight_map: dict[str, str] = weight_map  # tensor name (as the model names it) -> file
        self.file_key: dict[str, str] = {k: k for k in weight_map}  # tensor name -> its name in the file

    def rename(self, rename_key) -> None:
        """Name the tensors as the model does: ``rename_key(name in the file) -> model name``."""
        renamed = {rename_key(k): k for k in self.file_key.values()}
        self.weight_map = {new: self.weight_map[old] for new, old in renamed.items()}
        self.file_key = renamed

    def keys_under(self, prefix: str) -> list[str]:
        """Tensor names starting with ``prefix``."""
        return [k for k in self.weight_map if k.startswith(prefix)]

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (grouped by file, one open per file)."""
        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.weight_map[n], []).append(n)
        out = {}
        for file, keys in by_file.items():
            with safe_open(str(self.path / file), "pt") as f:
                for k in keys:
                    out[k] = f.get_tensor(self.file_key[k])
        return out

    def info(self) -> dict[str, tuple[int, str]]:
        """``{name: (number of elements, safetensors dtype such as "F32")}`` read from the file headers."""
        out = {}
        for file in set(self.weight_map.values()):
            if not (self.path / file).is_file():
                raise PTQ161Error(f"{self.path} lacks the shard {file} its index names")
            out |= tensor_info(self.path / file)
        return out

    def nbytes(self, dtype_bytes: int | None = None, prefixes: tuple[str, ...] = ("",)) -> int:
        """Bytes of the tensors whose names start with one of ``prefixes``, as stored, or at
        ``dtype_bytes`` per floating-point element."""
        total = 0
        for name, (numel, dt) in self.info().items():
            if not name.startswith(prefixes):
                continue
            is_float = dt in ("F32", "F16", "BF16", "F64")
            total += numel * (dtype_bytes if dtype_bytes is not None and is_float else DTYPE_BYTES.get(dt, 4))
        return total


def computed_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The non-persistent buffers of a meta skeleton (not stored in the safetensors: computed when the
    model is built, e.g. Gemma's embedding scale), computed by the model's own weight initialisation
    (``_init_weights``; the meta weights beside them stay untouched). Full name -> tensor on the CPU."""
    out: dict[str, torch.Tensor] = {}
    for path, mod in model.named_modules():
        names = [n for n in mod._non_persistent_buffers_set if getattr(mod._buffers.get(n), "is_meta", False)]
        if not names:
            continue
        for n in names:
            mod._buffers[n] = torch.empty_like(mod._buffers[n], device="cpu")
        model._init_weights(mod)
        for n in names:
            out[f"{path}.{n}" if path else n] = mod._buffers[n]
            mod._buffers[n] = mod._buffers[n].to("meta")
    return out


def _materialize(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    prefix: str,
    device,
    alias: dict[str, str],
    computed: dict[str, torch.Tensor] | None = None,
) -> None:
    """Fill a meta ``module`` with ``tensors`` (names ``prefix + key``, or ``alias[prefix + key]`` for a
    tied weight stored under another name), converted to the skeleton's dtypes and moved to ``device``;
    its non-persistent buffers from ``computed`` (``computed_buffers``).

    The tensors become the module's storage (``load_state_dict(assign=True)``): no second copy
    of a block or of the embedding exists while it loads.
    """
    state = {}
    for name, t in module.state_dict().items():
        key = prefix + name
        src = tensors.pop(key, None)
        if src is None:
            src = tensors.get(alias.get(key, ""))
        if src is None:
            raise PTQ161Error(f"the model's safetensors lack '{key}'")
        if src.shape != t.shape:
            raise PTQ161Error(f"'{key}' has shape {tuple(src.shape)}, the model expects {tuple(t.shape)}")
        check_finite(src, f"the model's weight '{key}'")
        state[name] = src.to(device=device, dtype=t.dtype)  # the skeleton carries the dtypes (packed factors fp16)
    module.load_state_dict(state, strict=True, assign=True)
    for name, buf in list(module.named_buffers()):
        if buf.is_meta and computed and prefix + name in computed:
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._buffers[leaf] = computed[prefix + name].to(device)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise PTQ161Error(f"block onloading cannot build '{prefix}{left[0]}' (not stored in the safetensors)")


@dataclass
class LazyModel:
    """A causal LM whose weights stay on ``meta`` until needed: decoder layers, embedding and lm_head.

    ``model`` is a regular transformers model object (packed layers for a packed directory):
    the final norm and rotary embedding are real; ``adapter.decoder_layers(model)[i]`` is real
    only between ``load_block(i)`` and ``release_block(i)``, and the embedding / lm_head only
    between ``load_module(path)`` and ``release_module(path)``.
    """

    model: nn.Module
    adapter: Adapter
    weights: SafetensorsDir
    device: torch.device
    computed: dict[str, torch.Tensor] = field(default_factory=dict)  # non-persistent buffers (computed_buffers)

    def _load(self, module: nn.Module, prefix: str) -> nn.Module:
        source = self.tied_modules().get(prefix[:-1])
        if source is not None:  # a compact head stored once, as the embedding
            return self._load_tied(module, prefix, source)
        names = self.weights.keys_under(prefix)
        alias = {}
        tied = getattr(self.model.config, "tie_word_embeddings", False)
        if not names and tied and prefix == self.adapter.lm_head + ".":  # the head is the embedding
            alias = {prefix + "weight": f"{self.adapter.embed}.weight"}
            names = [alias[prefix + "weight"]]
        _materialize(module, self.weights.load(names), prefix, self.device, alias, self.computed)
        validate_lowbit_modules(module, prefix)  # packed / int8 / int4 modules: before any kernel reads them
        return module

    def tied_modules(self) -> dict[str, str]:
        """{head path: embedding path} of a packed directory whose compact head reads the embedding's tensors."""
        q = getattr(self.model.config, "quantization_config", None)
        q = q if isinstance(q, dict) or q is None else q.to_dict()
        return (q or {}).get("tied_modules") or {}

    def _load_tied(self, module: nn.Module, prefix: str, source: str) -> nn.Module:
        """A tied compact head: the loaded embedding's own tensors, else its stored ones read once more."""
        embedding = self.model.get_submodule(source)
        if not any(t.is_meta for t in embedding.buffers()):
            tie_head(module, embedding)
        else:
            tensors = self.weights.load([f"{source}.{name}" for name in module.STORED])
            for name in module.STORED:
                check_finite(tensors[f"{source}.{name}"], f"the model's weight '{source}.{name}'")
                module.register_buffer(name, tensors[f"{source}.{name}"].to(self.device), persistent=False)
        validate_lowbit_modules(module, prefix)
        return module

    def load_block(self, i: int) -> nn.Module:
        """Load decoder layer ``i`` from the safetensors files and return it."""
        return self._load(self.adapter.decoder_layers(self.model)[i], f"{self.adapter.layers}.{i}.")

    def release_block(self, i: int) -> None:
        """Drop the weights of decoder layer ``i`` (back to ``meta``) and return the memory to the OS."""
        self.adapter.decoder_layers(self.model)[i].to("meta")
        return_freed_memory()

    def load_module(self, path: str) -> nn.Module:
        """Load the module at ``path`` (the embedding, the lm_head) and return it."""
        return self._load(self.model.get_submodule(path), path + ".")

    def release_module(self, path: str) -> None:
        """Drop the weights of the module at ``path`` and return the memory to the OS."""
        self.model.get_submodule(path).to("meta")
        return_freed_memory()

    def outside_modules(self) -> list[str]:
        """Paths of the modules outside the decoder layers with stored tensors of their own (embedding, norm, head)."""
        inside = self.adapter.layers + "."
        out = []
        for path, mod in self.model.named_modules():
            if not path or path == self.adapter.layers or path.startswith(inside):
                continue
            own = [*mod._parameters, *(k for k in mod._buffers if k not in mod._non_persistent_buffers_set)]
            if any(getattr(mod, k) is not None for k in own):
                out.append(path)
        return out

    @property
    def num_blocks(self) -> int:
        """Number of decoder layers."""
        return len(self.adapter.decoder_layers(self.model))


def model_bytes(where: str | Path, dtype: torch.dtype) -> int | None:
    """Bytes of the weights in directory ``where`` with floating-point tensors at ``dtype``;
    None when it holds no safetensors (a hub id: transformers loads it whole)."""
    try:
        weights = SafetensorsDir(where)
    except PTQ161Error:
        return None
    return weights.nbytes(torch.finfo(dtype).bits // 8)


HEAD_CHUNK = 256  # tokens per lm_head call when the logits of a window would be large (perplexity)
LARGE_LOGITS = 512 * 2**20  # bytes of [seqlen, vocab] float32 logits above which the head is chunked


def window_bytes(where: str | Path, seqlen: int) -> int:
    """Working memory of one perplexity window of ``seqlen`` tokens through the model in ``where`` (float32):
    the residual stream and MLP activations, the attention scores of all heads, and the logits (chunked
    as ``ptq161.eval.perplexity`` does), each counted twice for the temporaries beside them. 0 without a
    readable config.json."""
    try:
        cfg = json.loads((Path(where) / "config.json").read_text())
    except (OSError, ValueError):
        return 0
    cfg = cfg.get("text_config", cfg)
    hidden = int(cfg.get("hidden_size") or 0)
    inter = int(cfg.get("intermediate_size") or 4 * hidden)
    heads = int(cfg.get("num_attention_heads") or 1)
    vocab = int(cfg.get("vocab_size") or 0)
    logit_rows = HEAD_CHUNK if seqlen * vocab * 4 > LARGE_LOGITS else seqlen
    return 2 * 4 * (seqlen * (4 * hidden + 3 * inter) + heads * seqlen * seqlen + logit_rows * vocab)


def fits_in_memory(where: str | Path, dtype: torch.dtype, budget: int, seqlen: int | None = None) -> bool:
    """Whether the model in directory ``where`` at ``dtype`` can be held whole within ``budget`` bytes.

    Without ``seqlen`` (quantization): its weights take at most half of the budget, the other
    half is for activations, calibration streams and the output. With ``seqlen`` (evaluating
    windows of that length): what this process holds now, plus the weights twice (the
    safetensors pages read and the model's copy, both resident while loading), plus one
    window's working memory (``window_bytes``) fit in the budget. A directory without
    safetensors (a hub id) counts as fitting (it is loaded whole).
    """
    need = model_bytes(where, dtype)
    if need is None:
        return True
    if seqlen is None:
        return need <= budget // 2
    return current_rss_bytes() + 2 * need + window_bytes(where, seqlen) <= budget


def _checkpoint_renames(model: nn.Module, weights: SafetensorsDir):
    """``file name -> model name`` of the tensors, by the renames transformers applies when it loads
    ``model`` (e.g. GPT-NeoX's ``embed_out`` -> ``lm_head``); ``PTQ161Error`` when the checkpoint needs
    one of transformers' other conversions (merged or split tensors), which block onloading does not do."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    transforms = get_model_conversion_mapping(model)
    renames = [t for t in transforms if isinstance(t, WeightRenaming)]
    for t in transforms:
        if not isinstance(t, WeightRenaming) and any(t.rename_source_key(k)[1] for k in weights.file_key):
            raise PTQ161Error(
                f"block onloading cannot read this {type(model).__name__} checkpoint (transformers converts its "
                "tensors while loading): give a --max-memory the whole model fits in"
            )

    def rename_key(key: str) -> str:
        for t in renames:
            key = t.rename_source_key(key)[0]
        return key

    return rename_key


def load_lazy(
    where: str | Path,
    config,
    *,
    device: str | torch.device = "cpu",
    dtype=torch.float32,
    trust_remote_code: bool = False,
) -> LazyModel:
    """The skeleton of the model in directory ``where``: nothing loaded but the small modules.

    config: the model's transformers config (a packed ptq161 directory's config gets packed
    layers, as transformers' quantizer hook would build them). The rotary embedding is rebuilt
    on ``device`` from the config (its tables are computed, not stored).
    """
    from transformers import AutoModelForCausalLM

    from .hf_quantizer import replace_with_packed

    weights = SafetensorsDir(where)
    device = torch.device(device)
    quant = getattr(config, "quantization_config", None)
    if quant is not None:
        config = type(config).from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    if quant is not None:
        q = quant if isinstance(quant, dict) else quant.to_dict()
        tied = q.get("tied_modules") or {}
        replace_with_packed(model, q["layers"], q.get("int8_modules") or [], q.get("int4_modules") or {}, tied)
        model.config.quantization_config = quant
    adapter = get_adapter(model)
    weights.rename(_checkpoint_renames(model, weights))
    if adapter.rotary is not None:
        with torch.device(device):
            model.set_submodule(adapter.rotary, type(model.get_submodule(adapter.rotary))(config=model.config))
    lazy = LazyModel(model, adapter, weights, device, computed_buffers(model))
    for path in lazy.outside_modules():
        if path not in (adapter.embed, adapter.lm_head):
            lazy.load_module(path)  # the final norm: small
    model.eval()
    return lazy
