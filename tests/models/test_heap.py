"""bound_heap_growth: freed buffers of 1 MiB or more leave the process's RSS (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Allocate, touch and free a 4 MiB buffer twice; print the RSS kept after the second free (KiB).
# glibc's default raises its mmap threshold when the first (mapped) buffer is freed, so the second
# comes from the heap and stays resident; with the bound both are mappings, unmapped on free.
SCRIPT = """
import ctypes, sys
from ptq161.models.lazy import bound_heap_growth
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
if sys.argv[1] == 'bound':
    assert bound_heap_growth()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 4 * 2**20
for _ in range(2):
    before = rss()
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
print(rss() - before)
"""


def _kept_kib(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_bound_returns_freed_buffers_to_the_system():
    kept_default, kept_bound = _kept_kib("default"), _kept_kib("bound")
    assert kept_bound < 512  # the second 4 MiB buffer was unmapped when freed
    assert kept_default >= 3 * 1024  # what the bound is for: glibc's default keeps it resident


def test_cli_bounds_the_heap_only_with_a_budget(monkeypatch):
    import ptq161.models.lazy as lazy
    from ptq161.cli import main

    calls = []
    monkeypatch.setattr(lazy, "bound_heap_growth", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        main(["ppl", "--help"])
    assert calls == []
    assert main(["ppl", "smollm2-135m", "--datasets", "nosuch", "--max-memory", "3GB"]) != 0
    assert calls == [1]
