"""Test helpers: tiny random LLaMA models built from configs, a byte-level tokenizer, sample text."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ptq161.models.adapters import LLAMA_LIKE
from ptq161.nn import PackedPTQ161Linear
from ptq161.primitives.bits import pack_bits, pack_nibbles

SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
    "Quantization maps weights to few bits; calibration data guides the choice of scales. "
) * 40


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


def tiny_qwen2(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    """A tiny random Qwen2ForCausalLM (q/k/v with bias, untied lm_head), reproducible by ``seed``.

    The biases are drawn non-zero (transformers initialises them to zero), so that a path
    which drops a bias changes the output.
    """
    cfg = tiny_llama_config(architectures=["Qwen2ForCausalLM"]).to_dict()
    for key in ("model_type", "transformers_version", "architectures", "mlp_bias", "attention_bias", "pretraining_tp"):
        cfg.pop(key, None)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**cfg, architectures=["Qwen2ForCausalLM"]))
    with torch.no_grad():
        for layer in model.model.layers:
            for name in ("q_proj", "k_proj", "v_proj"):
                layer.self_attn.get_submodule(name).bias.normal_(0, 0.5)
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


def save_model_dir(model: torch.nn.Module, path) -> object:
    """Save ``model`` with the byte tokenizer as a model directory at ``path``; -> ``path``."""
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def random_parts(m: int, n: int, n_sal: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random PTQ1.61 parts of an [m, n] layer with n_sal salient columns (packed sign and codes)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:n_sal]] = True
    n_b = n - n_sal
    return {
        "mask": mask,
        "sign": pack_bits(torch.rand(m, n_b, generator=g) > 0.5),
        "codes": pack_nibbles(torch.randint(0, 16, (m, n_sal), dtype=torch.uint8, generator=g)),
        "scale": (torch.rand(m, generator=g) * 0.01 + 1e-3).half(),
        "zero": torch.randint(0, 16, (m,), dtype=torch.uint8, generator=g),
        "a": (torch.rand(m, generator=g) * 0.02).half(),
        "b": (torch.randn(m, generator=g) * 0.001).half(),
        "r2": (torch.rand(n_b, generator=g) + 0.5).half(),
    }


def random_packed_llama(seed: int = 0, qwen2: bool = False, **overrides) -> torch.nn.Module:
    """A tiny LLaMA (or Qwen2, with q/k/v biases kept) whose decoder linears are random packed PTQ1.61 layers."""
    model = (tiny_qwen2 if qwen2 else tiny_llama)(seed, **overrides)
    k = 0
    for layer in model.model.layers:
        for name in LLAMA_LIKE.linear_names:
            lin = layer.get_submodule(name)
            n = lin.in_features
            parts = random_parts(lin.out_features, n, n // 5, seed=k)
            parts["a"] = (parts["a"].float() * 20).half()  # weights of the size of the dense init
            bias = lin.bias.detach() if lin.bias is not None else None
            layer.set_submodule(name, PackedPTQ161Linear.from_parts(parts, bias))
            k += 1
    return model


def hessian_layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W [48, 256], X [2048, 256], H [256, 256]): a layer with correlated inputs of uneven channel scales."""
    from ptq161.calibration import HessianAccumulator

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 256, generator=g) * 0.02
    # correlated inputs with uneven channel scales, as real activations are
    mix = torch.randn(64, 256, generator=g) * (torch.rand(256, generator=g) * 3 + 0.1)
    x = torch.randn(2048, 64, generator=g) @ mix + 0.1 * torch.randn(2048, 256, generator=g)
    acc = HessianAccumulator(256)
    acc.update(x)
    return w, x, acc.get()


def out_err(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    """Mean squared output error of the quantized weight q against w on inputs x."""
    return ((x @ (q - w).T) ** 2).mean().item()


def quantize_with(model, method: str = "ptq161", *, method_config=None, calib=None, e2e=None, head=None, **kw):
    """``ptq161.quantize`` with a ``Recipe`` built from typed configs (unset ones: the configs' defaults)."""
    from ptq161 import CalibConfig, E2EConfig, Recipe, quantize

    recipe = Recipe(method, method_config, calib or CalibConfig(), e2e or E2EConfig(), head)
    return quantize(model, recipe, **kw)


def quantize_tiny(model_dir, text_file, out, epochs: int = 2, nsamples: int = 4, **kw):
    """PTQ1.61 of a tiny model directory on a text file (windows of 64 tokens), saved to ``out``."""
    from ptq161 import CalibConfig
    from ptq161.methods.ptq161 import PTQ161Config

    calib = CalibConfig(dataset=f"text:{text_file}", nsamples=nsamples, seqlen=64)
    return quantize_with(
        str(model_dir), method_config=PTQ161Config(epochs=epochs), calib=calib, output=out, progress=False, **kw
    )


def assert_parts_close(got: dict, want: dict, rel: float = 1e-2) -> None:
    """Every layer's stored parts: integer ones (signs, codes, masks) equal, float ones within ``rel``
    relative norm (Adam amplifies float rounding where a gradient is near 0: norms, not elements)."""
    for layer, parts in want.items():
        for key, v in parts.items():
            w = got[layer][key]
            if v.is_floating_point():
                assert (w.float() - v.float()).norm() <= rel * v.float().norm(), (layer, key)
            else:
                assert torch.equal(w, v), (layer, key)
