"""Shared fixtures (helpers to import live in ``tests/helpers.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.helpers import SAMPLE_TEXT, byte_tokenizer, save_model_dir, tiny_llama

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A saved tiny model directory (weights + byte tokenizer)."""
    return save_model_dir(tiny_llama(), tmp_path / "tiny")


@pytest.fixture
def shared_data() -> Path:
    """The real data directory (skips when absent)."""
    env = os.environ.get("PTQ161_DATA")
    path = Path(env) if env else SHARED_DATA
    if not (path / "wikitext-2-raw-v1" / "wiki.test.raw").is_file():
        pytest.skip("shared data directory with WikiText-2 not available")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (converted once into the user cache)."""
    from ptq161.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A small English text file usable as calibration or evaluation corpus."""
    f = tmp_path / "sample.txt"
    f.write_text(SAMPLE_TEXT)
    return f


DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each torch device the GPU paths must run on; ``cuda`` is skipped where no GPU exists."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return request.param
