"""The output directory of ``ptq161 quantize``.

PTQ1.61 results are written packed (``weights_format: packed``): a Hugging Face model
directory whose quantized linears are stored as sign bits, 4-bit codes and fp16 factors
(see ``ptq161.nn.packed``). Baselines are written dequantized ("fake quant",
``weights_format: dense``) with ``ptq161_parts.safetensors`` beside them. Both carry
``ptq161.json`` (method, settings, calibration, per-block log, bits), written last: a
directory without it is an unfinished run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import PTQ161Error
from ..methods import Method, Parts
from ..models.integrity import OUTPUT_META, manifest
from ..models.lazy import DTYPE_BYTES, LazyModel, SafetensorsDir, tensor_info
from ..nn import head_twin
from ..nn.heads import embedding_from_head, head_storage
from ..nn.packed import PACKED_BUFFERS, PTQ161Parts
from ..utils import LOCK_NAME, atomic_save_file, atomic_write_json, os_errors, read_json
from .convert import (
    config_ties_head,
    pack_linears_in_place,
    pack_model_in_place,
    record_head_layout,
    record_packed_layout,
)
from .driver import flatten_parts, unflatten_parts
from .state import STATE_DIR

FORMAT_VERSION = 1
META = OUTPUT_META
PARTS = "ptq161_parts.safetensors"


def check_output_dir(path: Path, resume: bool, meta: str = META) -> None:
    """Refuse directories that hold something else, a finished result, or (without --resume) a partial run.

    ``meta`` names the file a finished result has; an interrupted run has a ``STATE_DIR``.
    """
    if not path.exists():
        return
    if not path.is_dir():
        raise PTQ161Error(f"output '{path}' exists and is not a directory")
    entries = {p.name for p in path.iterdir()} - {LOCK_NAME}  # the lock of this run
    if not entries:
        return
    if meta in entries:
        raise PTQ161Error(f"output '{path}' already holds a finished result; choose another --output or remove it")
    if STATE_DIR in entries:
        if not resume:
            raise PTQ161Error(f"output '{path}' holds an interrupted run; pass --resume to continue it")
        return
    raise PTQ161Error(f"output '{path}' is not empty and holds something else; choose another --output")


def write_output(
    path: Path,
    model: Any,
    tokenizer: Any,
    method: Method,
    parts: dict[str, Parts],
    meta: dict[str, Any],
    head: str = "fp32",
) -> None:
    """Write the model (packed in place when ``method.packs``), parts and metadata; ``ptq161.json`` last.

    ``head`` is the format of a packed model's embedding and lm_head (``ptq161.nn.heads``).

    The resume state of the run (``STATE_DIR``) is removed once the result is complete.
    """
    path.mkdir(parents=True, exist_ok=True)
    if method.packs:
        pack_model_in_place(model, method, parts, head=head)
    with os_errors(path):
        model.save_pretrained(path)
    _finish(path, tokenizer, method.packs, parts, meta)


def _finish(path: Path, tokenizer: Any, packs: bool, parts: dict[str, Parts], meta: dict[str, Any]) -> None:
    """The tokenizer, the parts of a dense result, ``ptq161.json`` last; then the resume state goes."""
    tokenizer.save_pretrained(path)
    if not packs:
        atomic_save_file(flatten_parts(parts), path / PARTS, metadata={"format_version": str(FORMAT_VERSION)})
    remove_leftovers(path)
    files = manifest(path, skip=(META, STATE_DIR, LOCK_NAME))  # checked when the directory is loaded
    meta = {**meta, "weights_format": "packed" if packs else "dense", "files": files}
    atomic_write_json(path / META, {"format_version": FORMAT_VERSION, **meta})
    shutil.rmtree(path / STATE_DIR, ignore_errors=True)


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files of interrupted atomic writes (``.NAME.tmp``, ``.NAME.XXXX``) in ``path``:
    every dot-file at its top level but the run's state and lock."""
    for p in path.iterdir():
        if p.name.startswith(".") and p.name not in (STATE_DIR, LOCK_NAME) and p.is_file():
            p.unlink()


def write_output_lazy(
    path: Path,
    lazy: LazyModel,
    tokenizer: Any,
    method: Method,
    parts: dict[str, Parts],
    meta: dict[str, Any],
    head: str = "fp32",
) -> None:
    """``write_output`` for a block-onloaded run: one module in memory at a time, one shard each.

    Each decoder block is loaded, packed (or given its dequantized weights), written as its
    own safetensors shard and released; then the embedding, final norm and lm_head, one at a
    time (in format ``head``). An index and the config make it a sharded Hugging Face
    directory that transformers (and ``ptq161.load``) read as usual.
    """
    model = lazy.model
    layers: dict[str, dict] = {}

    def prepare(block_parts: dict[str, Parts]) -> None:
        if method.packs:
            layers.update(pack_linears_in_place(model, method, block_parts))
        else:
            for name, p in block_parts.items():
                lin = model.get_submodule(name)
                lin.weight.data.copy_(method.dequantize(p).to(lin.weight.dtype))

    head = head if method.packs else "fp32"
    tied = config_ties_head(model) or head_storage(head)[1]
    write_modules_lazily(path, lazy, parts, prepare, head, config_ties_head(model))
    if method.packs:
        record_packed_layout(model, method, layers)
        record_head_layout(model, head, tied)
    write_config(path, model)
    _finish(path, tokenizer, method.packs, parts, meta)


def write_modules_lazily(
    path: Path,
    lazy: LazyModel,
    parts: dict[str, Parts],
    prepare: Callable[[dict[str, Parts]], None],
    head: str,
    tied: bool,
) -> None:
    """Write ``lazy``'s weights into ``path`` one module at a time, one safetensors shard each, and their index.

    Each decoder block is loaded, given to ``prepare`` with its entries of ``parts`` (to swap
    or fill its linears in place), written and released; then the embedding, final norm and
    lm_head, one at a time (the embedding and lm_head in format ``head``; with ``tied`` the head is
    not written: it is the embedding, which ``record_head_layout(..., tied)`` says; an ``-tied`` format
    writes the lm_head's table as the embedding).
    """
    path.mkdir(parents=True, exist_ok=True)
    adapter = lazy.adapter
    shard = 0
    for i in range(lazy.num_blocks):
        block = lazy.load_block(i)
        prefix = f"{adapter.layers}.{i}."
        prepare({k: v for k, v in parts.items() if k.startswith(prefix)})
        _save_shard(path, shard, {prefix + k: v for k, v in block.state_dict().items()})
        lazy.release_block(i)
        shard += 1
    fmt, force = head_storage(head)
    for mod_path in lazy.outside_modules():
        if (tied or force) and mod_path == adapter.lm_head:
            continue  # stored once, as the embedding
        if force and not tied and mod_path == adapter.embed:  # the lm_head's table serves as the embedding
            lm = lazy.load_module(adapter.lm_head)
            mod = embedding_from_head(lm, fmt, getattr(lazy.model, "dtype", torch.float32))
            _save_shard(path, shard, {f"{mod_path}.{k}": v for k, v in mod.state_dict().items()})
            lazy.release_module(adapter.lm_head)
            shard += 1
            continue
        mod = lazy.load_module(mod_path)
        if mod_path in (adapter.embed, adapter.lm_head):
            mod = head_twin(mod, fmt)
        _save_shard(path, shard, {f"{mod_path}.{k}": v for k, v in mod.state_dict().items()})
        lazy.release_module(mod_path)
        shard += 1
    _write_shard_index(path, shard)


def write_config(path: Path, model: Any) -> None:
    """The model's config (and generation config) as transformers writes them."""
    model.config.save_pretrained(path)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(path)


def _shard_name(i: int) -> str:
    return f"model-{i + 1:05d}.safetensors"


def _save_shard(path: Path, i: int, tensors: dict[str, torch.Tensor]) -> None:
    """Write shard ``i`` (contiguous copies where needed) atomically."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    atomic_save_file(tensors, path / _shard_name(i), metadata={"format": "pt"})


def _write_shard_index(path: Path, count: int) -> None:
    """``model.safetensors.index.json`` over shards 0..count-1 (the layout transformers loads)."""
    weight_map, total = {}, 0
    for i in range(count):
        for k, (numel, dt) in tensor_info(path / _shard_name(i)).items():
            weight_map[k] = _shard_name(i)
            total += numel * DTYPE_BYTES[dt]
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    atomic_write_json(path / "model.safetensors.index.json", index)


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The ``ptq161.json`` of an output directory, or None for a plain model directory."""
    f = Path(path) / META
    if not f.is_file():
        return None
    meta = read_json(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise PTQ161Error(f"{f} has format version {meta.get('format_version')}, this ptq161 reads {FORMAT_VERSION}")
    return meta


def read_parts(path: str | Path) -> dict[str, Parts]:
    """All stored parts of an output directory, keyed by layer path (packed directories: from their buffers)."""
    meta = read_meta(path)
    if meta is not None and meta.get("weights_format") == "packed":
        return _packed_parts(Path(path), meta)
    f = Path(path) / PARTS
    if not f.is_file():
        raise PTQ161Error(f"{path} holds no {PARTS}")
    try:
        return unflatten_parts(load_file(str(f)))
    except Exception as e:  # safetensors raises several types for damaged files
        raise PTQ161Error(f"{f} is unreadable: {str(e).splitlines()[0]}") from None


def bits_report(method: Method, parts: dict[str, Parts]) -> dict[str, Any]:
    """Per-layer and whole-model bits per weight (paper count and as stored) for the decoder linears."""
    layers = {}
    numel = stored = 0
    paper = 0.0
    for name, p in parts.items():
        lb = method.layer_bits(p)
        layers[name] = {
            "numel": lb.numel,
            "paper_bits_per_weight": lb.paper_bits,
            "stored_bits_per_weight": lb.stored_bits / lb.numel,
        }
        numel += lb.numel
        stored += lb.stored_bits
        paper += lb.paper_bits * lb.numel
    return {
        "numel": numel,
        "paper_bits_per_weight": paper / max(numel, 1),
        "stored_bits_per_weight": stored / max(numel, 1),
        "stored_bytes": stored / 8,
        "layers": layers,
    }


def verify_parts(method: Method, model: torch.nn.Module, parts: dict[str, Parts]) -> float:
    """Max |W_model - dequantize(parts)| over all layers (0.0 for a faithful artifact)."""
    worst = 0.0
    for name, p in parts.items():
        mod = model.get_submodule(name)
        w = (mod.dequantize() if hasattr(mod, "dequantize") else mod.weight).detach().float().cpu()
        worst = max(worst, (w - method.dequantize(p)).abs().max().item())
    return worst


def _packed_parts(path: Path, meta: dict[str, Any]) -> dict[str, Parts]:
    """The stored parts of a packed directory (one file or shards), keyed by layer path."""
    weights = SafetensorsDir(path)
    parts: dict[str, Parts] = {}
    for layer in meta["bits"]["layers"]:
        names = [f"{layer}.{k}" for k in PACKED_BUFFERS]
        missing = [n for n in names if n not in weights.weight_map]
        if missing:
            raise PTQ161Error(f"{path} is missing tensor {missing[0]}")
        t = weights.load(names)
        sal = t[f"{layer}.sal_idx"].long()
        mask = torch.zeros(sal.numel() + t[f"{layer}.bin_idx"].numel(), dtype=torch.bool)
        mask[sal] = True
        record = PTQ161Parts(mask, **{k: t[f"{layer}.{k}"] for k in PACKED_BUFFERS[2:]})  # after the indices
        parts[layer] = record.as_dict()
    return parts


def file_bits_per_weight(path: str | Path, layers: dict[str, Any]) -> float:
    """Bits per weight of the decoder linears counted from the bytes of their tensors on disk."""
    numel = sum(v["numel"] for v in layers.values())
    return 8 * SafetensorsDir(path).nbytes(prefixes=tuple(f"{layer}." for layer in layers)) / max(numel, 1)


def head_format(meta: dict[str, Any]) -> str:
    """The head format ("fp32", "int8", "int4") an output's ``ptq161.json`` records (older ones: ``int8_head``)."""
    return meta.get("head") or ("int8" if meta.get("int8_head") else "fp32")


def _stores_a_tied_head_twice(lazy: LazyModel) -> bool:
    """Whether a packed directory stores a compact lm_head apart (no ``tied_modules``) whose tensors equal
    its compact embedding's bit for bit: a tied model's head written twice."""
    adapter = lazy.adapter
    head, emb = lazy.model.get_submodule(adapter.lm_head), lazy.model.get_submodule(adapter.embed)
    names = getattr(head, "STORED", None)
    if lazy.tied_modules() or names is None or getattr(emb, "STORED", None) != names:
        return False
    mine = lazy.weights.load([f"{adapter.lm_head}.{n}" for n in names])
    theirs = lazy.weights.load([f"{adapter.embed}.{n}" for n in names])
    return all(torch.equal(mine[f"{adapter.lm_head}.{n}"], theirs[f"{adapter.embed}.{n}"]) for n in names)


def convert_output(
    src: str | Path,
    out: str | Path,
    *,
    head: str = "int8",
    verify: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write a packed output directory ``src`` (fp32 head) again as ``out`` with its embedding and lm_head
    in format ``head`` ("int8", "int4", "int8-tied", "int4-tied": ``ptq161.nn.heads``).

    What ``quantize --head HEAD`` would have written, without quantizing again: the decoder
    blocks are copied as they are (one module in memory at a time, so it works on models
    larger than RAM), the embedding and head are re-encoded. A source already in the format
    converts too when only the storage changes: to ``-tied`` (the lm_head's table, as stored,
    becomes the embedding's), or when its lm_head stores the embedding's very tensors (a tied model
    written before tied heads were stored once: stored once now). Returns the new ``ptq161.json``.
    """
    from ..models import PTQ161HfConfig
    from ..models.loading import load_model_lazy
    from ..utils import output_lock

    src, out = Path(src), Path(out)
    meta = read_meta(src) if src.is_dir() else None
    if meta is None:
        raise PTQ161Error(f"'{src}' is not a ptq161 output directory (no {META})")
    if meta.get("weights_format") != "packed":
        raise PTQ161Error(f"'{src}' holds dense (fake-quant) weights of method '{meta.get('method')}'; only a packed "
                          "result can be converted")  # fmt: skip
    fmt, force = head_storage(head)
    if fmt == "fp32":
        raise PTQ161Error("nothing to convert: choose --head int8, int4, int8-tied or int4-tied")
    lazy, tokenizer = load_model_lazy(str(src), verify=verify, trust_remote_code=trust_remote_code)
    model = lazy.model
    was = head_storage(head_format(meta))[0]
    stored_once = bool(lazy.tied_modules())
    restore = was == fmt and not stored_once and (force or _stores_a_tied_head_twice(lazy))
    if was != "fp32" and not restore:
        raise PTQ161Error(
            f"'{src}' already stores its embedding and lm_head in {head_format(meta)}; convert a result with an "
            "fp32 head (quantize --fp32-head) so that the head is quantized once"
        )
    if out.resolve() == src.resolve():
        raise PTQ161Error("--output must be a new directory, not the source")
    tied = config_ties_head(model) or (restore and not force)  # the same table already
    with output_lock(out):
        check_output_dir(out, resume=False)
        write_modules_lazily(out, lazy, {}, lambda _parts: None, head=head, tied=tied)
        tied = tied or force
        q = model.config.quantization_config
        q = dict(q) if isinstance(q, dict) else q.to_dict()
        q.pop("quant_method", None)
        model.config.quantization_config = PTQ161HfConfig(**q)
        record_head_layout(model, head, tied)
        write_config(out, model)
        new = {k: v for k, v in meta.items() if k not in ("files", "weights_format", "format_version", "int8_head")}
        new |= {"head": head, "converted_from": str(src)}
        _finish(out, tokenizer, True, {}, new)
    return read_meta(out)
