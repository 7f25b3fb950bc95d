"""What this machine offers the code paths: CPU features, native bfloat16 products, a compiler.

Kept apart from the numba kernels so that choosing a dtype or a compile setting does not
import numba. CPU features are LLVM's names (``avx512f``, ``avx512bf16``, ``amx-bf16``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil

import torch
from llvmlite import binding as llvm_binding

# the features that pick a code path somewhere in ptq161 (kernels, bfloat16 products), recorded with results
PATH_FEATURES = ("avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avx512bf16", "amx-bf16")


@functools.cache
def host_cpu_features() -> frozenset[str]:
    """The LLVM features this CPU has (what LLVM detects, whatever numba is told to compile for)."""
    return frozenset(name for name, on in llvm_binding.get_host_cpu_features().items() if on)


def host_has_feature(name: str) -> bool:
    """Whether the CPU numba compiles for has the LLVM feature ``name`` (e.g. "avx512f"):
    ``NUMBA_CPU_FEATURES`` when it is set (numba then compiles for those features), else this CPU's."""
    features = os.environ.get("NUMBA_CPU_FEATURES", "")
    if features:
        return f"+{name}" in features.split(",")
    return name in host_cpu_features()


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (CPU: AVX-512 BF16 or AMX-BF16; CUDA: as
    torch reports it), so that a bfloat16 product is faster than a float32 one, not an emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = host_cpu_features()  # this CPU (torch does not compile for NUMBA_CPU_FEATURES)
    return device.type == "cpu" and bool({"avx512bf16", "amx-bf16"} & cpu)


def can_compile(device: torch.device) -> bool:
    """Whether ``torch.compile``'s default backend has what it needs on ``device``: a C++ compiler
    for CPUs (``$CXX``, g++, c++ or clang++ on the PATH), triton for CUDA."""
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    return device.type == "cpu" and any(n and shutil.which(n) for n in names)


def path_features() -> list[str]:
    """Which of ``PATH_FEATURES`` this CPU has (recorded in every output and results file)."""
    return [f for f in PATH_FEATURES if f in host_cpu_features()]
