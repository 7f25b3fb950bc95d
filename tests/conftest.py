"""Shared fixtures: tiny random LLaMA models built from configs, a byte-level tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer LLaMA config small enough for unit tests (vocab 260 covers the byte tokenizer)."""
    cfg = dict(
        vocab_size=260,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A randomly initialised tiny LlamaForCausalLM in eval mode, reproducible by ``seed``."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**overrides))
    return model.eval()


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer without merges: one token per UTF-8 byte (ids < 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=None)


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A saved tiny model directory (weights + byte tokenizer)."""
    d = tmp_path / "tiny"
    tiny_llama().save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


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


SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "Quantization maps weights to few bits; calibration data guides the choice of scales. "
) * 40


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A small English text file usable as calibration or evaluation corpus."""
    f = tmp_path / "sample.txt"
    f.write_text(SAMPLE_TEXT)
    return f
