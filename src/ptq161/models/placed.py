"""accelerate placement: a model larger than one device, spread over the GPUs, the CPU RAM and the disk.

The block-wise driver needs one decoder layer at a time. Block onloading (``ptq161.models.lazy``)
reads each layer from the safetensors into CPU RAM (or one device); with several GPUs, or a GPU
smaller than the model, transformers and accelerate place the model instead (``device_map`` from
``max_memory``: the first layers on the GPUs, then the CPU, then an offload folder on disk), and
``PlacedModel`` hands the driver one layer at a time, materialised on the device it runs on:
a layer placed on a GPU runs there, an offloaded one is brought to the main device. What
placement to use is decided by ``choose_placement`` (a pure rule) and logged by the caller.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import PTQ161Error
from .adapters import Adapter, get_adapter
from .lazy import return_freed_memory

PLACEMENTS = ("auto", "whole", "onload", "accelerate")
PLACEMENT_NAMES = {
    "whole": "the whole model in memory",
    "onload": "block onloading",
    "accelerate": "accelerate placement",
}
GPU_SHARE = 0.9  # of a GPU's free memory given to the weights (accelerate's own default share)
OFFLOAD_DIR = ".ptq161-offload"  # accelerate's offload folder inside the output directory, removed at the end


def choose_placement(
    requested: str, device_type: str, weight_bytes: int | None, ram_budget: int, gpu_free: int | None = None
) -> str:
    """Where the block stage keeps the model: ``"whole"``, ``"onload"`` or ``"accelerate"``.

    requested: one of ``PLACEMENTS``; anything but ``"auto"`` is taken as given. ``"auto"``: a model
    whose weights (``weight_bytes``; None = unknown, loaded whole) take at most half of ``ram_budget``
    and, on a GPU, at most half of the main GPU's free memory ``gpu_free`` is held whole; otherwise
    on a GPU accelerate places it (GPUs, then CPU RAM, then disk) and on the CPU it is block-onloaded
    (one layer read from the safetensors at a time, nothing copied to an offload folder).
    """
    if requested not in PLACEMENTS:
        raise PTQ161Error(f"unknown placement '{requested}': choose one of {', '.join(PLACEMENTS)}")
    if requested != "auto":
        return requested
    if weight_bytes is None:
        return "whole"
    fits_ram = weight_bytes <= ram_budget // 2
    if device_type == "cuda":
        fits_gpu = gpu_free is not None and weight_bytes <= gpu_free // 2
        return "whole" if fits_ram and fits_gpu else "accelerate"
    return "whole" if fits_ram else "onload"


def accelerate_memory(device: torch.device, ram_budget: int) -> dict[int | str, int]:
    """accelerate's ``max_memory``: ``GPU_SHARE`` of each GPU's free memory when ``device`` is a GPU, and half of
    ``ram_budget`` for the CPU (the other half is for the calibration streams and activations)."""
    out: dict[int | str, int] = {}
    if device.type == "cuda":
        for i in range(torch.cuda.device_count()):
            out[i] = int(torch.cuda.mem_get_info(i)[0] * GPU_SHARE)
    out["cpu"] = ram_budget // 2
    return out


def device_map_summary(device_map: dict[str, int | str | torch.device]) -> dict[str, int]:
    """How many modules of a ``device_map`` sit on each place: ``{"cuda:0": 10, "cpu": 4, "disk": 10}``."""
    count: Counter[str] = Counter()
    for place in device_map.values():
        count[f"cuda:{place}" if isinstance(place, int) else str(place)] += 1
    return dict(count)


def _own_tensors(module: nn.Module):
    yield from module.named_parameters(recurse=False)
    yield from ((n, b) for n, b in module.named_buffers(recurse=False) if b is not None)


@dataclass
class PlacedModel:
    """A causal LM placed by accelerate (``hf_device_map``), handed to the driver one module at a time.

    ``load_block(i)`` / ``load_module(path)`` return the module with its weights on its execution
    device (accelerate's hooks removed, offloaded weights read back); ``release_block`` /
    ``release_module`` drop them (the quantized form lives on in the driver's parts). The same
    interface as ``LazyModel``'s, so the driver serves both.
    """

    model: nn.Module
    adapter: Adapter
    device: torch.device  # the main device: where offloaded modules run

    def execution_device(self, path: str) -> torch.device:
        """Where the module at ``path`` runs: its GPU when the device map puts it (or a parent) on one,
        else the main device."""
        device_map = getattr(self.model, "hf_device_map", {}) or {}
        best = ""
        for name in device_map:
            if (name == "" or path == name or path.startswith(name + ".")) and len(name) >= len(best):
                best = name
        place = device_map.get(best, self.device)
        if isinstance(place, int):
            return torch.device("cuda", place)
        if isinstance(place, torch.device) or (isinstance(place, str) and place not in ("cpu", "disk")):
            return torch.device(place)
        return self.device

    def _load(self, module: nn.Module, path: str) -> nn.Module:
        from accelerate.hooks import remove_hook_from_module
        from accelerate.utils import align_module_device

        device = self.execution_device(path)
        found: list[tuple[nn.Module, str, torch.Tensor]] = []
        for sub in module.modules():
            with align_module_device(sub, device):  # offloaded weights read back while inside
                found += [(sub, name, t.detach().to(device)) for name, t in _own_tensors(sub)]
        remove_hook_from_module(module, recurse=True)
        for sub, name, t in found:
            if t.is_meta:
                raise PTQ161Error(f"accelerate placement left '{path}' without its weight '{name}'")
            if name in sub._parameters:
                sub._parameters[name] = nn.Parameter(t, requires_grad=sub._parameters[name].requires_grad)
            else:
                sub._buffers[name] = t
        return module

    def load_block(self, i: int) -> nn.Module:
        """Decoder layer ``i`` with its weights on its execution device."""
        return self._load(self.adapter.decoder_layers(self.model)[i], f"{self.adapter.layers}.{i}")

    def release_block(self, i: int) -> None:
        """Drop the weights of decoder layer ``i`` (to ``meta``) and return the memory to the OS."""
        self.adapter.decoder_layers(self.model)[i].to("meta")
        return_freed_memory()

    def load_module(self, path: str) -> nn.Module:
        """The module at ``path`` (the embedding) with its weights on its execution device."""
        return self._load(self.model.get_submodule(path), path)

    def release_module(self, path: str) -> None:
        """Drop the weights of the module at ``path``."""
        self.model.get_submodule(path).to("meta")
        return_freed_memory()

    @property
    def num_blocks(self) -> int:
        """Number of decoder layers."""
        return len(self.adapter.decoder_layers(self.model))


def load_placed(
    where: str | Path,
    config,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    max_memory: dict[int | str, int],
    offload_dir: Path,
    trust_remote_code: bool = False,
) -> PlacedModel:
    """The model in directory ``where`` placed by accelerate within ``max_memory`` (``accelerate_memory``),
    whole decoder layers on one place each, what does not fit offloaded to ``offload_dir``."""
    from accelerate import infer_auto_device_map
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    adapter = get_adapter(skeleton)
    layer_class = type(adapter.decoder_layers(skeleton)[0]).__name__
    device_map = infer_auto_device_map(
        skeleton, max_memory=max_memory, no_split_module_classes=[layer_class], dtype=dtype
    )
    del skeleton
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where,
            config=config,
            dtype=dtype,
            device_map=device_map,
            offload_folder=str(offload_dir),
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, RuntimeError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise PTQ161Error(f"accelerate could not place the model in {where}: {first}") from None
    model.eval()
    return PlacedModel(model, get_adapter(model), device)
