"""A fused batch-1 decode engine for packed LLaMA-layout models on the CPU.

Decoding one token through transformers' eager modules costs hundreds of small torch
calls per layer; for a packed model whose matrix work is only a few milliseconds, that
overhead dominates (measured in benchmarks/results/packed_inference.md). The engine runs
all decoder layers of one step as a single numba call over the packed buffers:
RMSNorm, the seven packed linears (the kernels of ``ptq161.primitives.kernels``),
rotary embedding, grouped-query attention over its own KV cache, SiLU MLP and residuals.
Threads share the rows of each linear; q/k/v and gate/up run in one parallel region each,
so a layer has five.
The lm_head stays the model's own module (one call per step; an int8 head runs its VNNI or
float kernel); the final norm is the engine's RMSNorm, as in the layers; the embedding row
is read with numpy for fp32 and int8 tables (the same values as the module's; other
embeddings are called), a prompt of up to ``step_prefill`` tokens goes through the engine's own
steps (a token costs one step; the model's forward rebuilds every weight tile once per call, which
short prompts do not repay: benchmarks/results/prefill_paths.md), a longer one through the
model's own forward, and the rotary
table comes from the model's rotary module, so rope variants are the model's, not
re-implemented. (At this scale a torch call's overhead is a visible share of a step: the module
calls for the embedding and the final norm were a quarter of it.)

It serves packed models (every decoder linear a ``PackedPTQ161Linear``, with or without bias, as
Qwen2's q/k/v) whose computation is the one ``runtime.capability.ENGINE`` describes: LLaMA layout,
RMSNorm before attention and MLP, no q/k norm or Qwen3's per-head one, full static rotary, SiLU
MLP, standard attention scale, no multipliers or soft-capping, no sliding window shorter than the cache.
``DecodeEngine.unsupported_reason(model)`` says why a model is not served; callers then fall back
to the model's own forward.
"""

from __future__ import annotations

import inspect
import time
from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import typed
from torch import nn

from ..errors import UnsupportedModelError
from ..models.adapters import LLAMA_LIKE, get_adapter
from ..nn import Int8Embedding, PackedPTQ161Linear
from ..primitives.kernels import CODES, PERMUTE_SIGNS, SIGN, chunk_bounds, kernel_threads, linear_chunk
from .capability import describe, engine_mismatches

KINDS = LLAMA_LIKE.linear_names  # q, k, v, o, gate, up, down
STEP_PREFILL = 16  # prompts up to this many tokens: one engine step per token (benchmarks/prefill_paths.py)


class Scratch(NamedTuple):
    """The engine's work arrays for one token (float32; d hidden, I intermediate, C row chunks = threads,
    G sign bytes and P code bytes of the widest layer), reused every step."""

    xn: np.ndarray  # [d]: the normed hidden state
    q: np.ndarray  # [heads * head_dim]
    k: np.ndarray  # [kv_heads * head_dim]
    v: np.ndarray  # [kv_heads * head_dim]
    att: np.ndarray  # [heads * head_dim]: attention output
    o: np.ndarray  # [d]: o_proj / down_proj output
    g: np.ndarray  # [I]: gate (then SiLU(gate) * up)
    u: np.ndarray  # [I]: up
    lut_b: np.ndarray  # [C, G, 32 or 256]: each chunk's sign-sum tables (nibble or byte)
    xp: np.ndarray  # [C, 8 G]: each chunk's r2-scaled binary inputs
    xe: np.ndarray  # [C, P]: even salient inputs
    xo: np.ndarray  # [C, P]: odd salient inputs


def _rms_norm(x, weight, eps, out):
    """out [d] = weight * x / sqrt(mean(x^2) + eps) (LlamaRMSNorm in float32)."""
    acc = np.float32(0.0)
    for j in range(x.shape[0]):
        acc += x[j] * x[j]
    inv = np.float32(1.0) / np.sqrt(acc / x.shape[0] + eps)
    for j in range(x.shape[0]):
        out[j] = weight[j] * (x[j] * inv)


def _rope(v, heads, head_dim, cos, sin):
    """Rotate v [heads * head_dim] in place: v * cos + rotate_half(v) * sin (cos, sin [head_dim])."""
    half = head_dim // 2
    for h in range(heads):
        o = h * head_dim
        for j in range(half):
            x1 = v[o + j]
            x2 = v[o + j + half]
            v[o + j] = x1 * cos[j] - x2 * sin[j]
            v[o + j + half] = x2 * cos[j + half] + x1 * sin[j + half]


def _attend(q, k_cache, v_cache, pos, n_heads, n_kv, head_dim, att):
    """att [n_heads * head_dim] = softmax(q K^T / sqrt(head_dim)) V over positions 0..pos, per head;
    k_cache, v_cache [n_kv, max_len, head_dim] (grouped-query: head h reads kv group h // (n_heads / n_kv))."""
    group = n_heads // n_kv
    scaling = np.float32(1.0) / np.sqrt(np.float32(head_dim))
    for hh in numba.prange(n_heads):
        kv = hh // group
        qh = q[hh * head_dim : (hh + 1) * head_dim]
        out = att[hh * head_dim : (hh + 1) * head_dim]
        scores = np.empty(pos + 1, dtype=np.float32)
        best = np.float32(-np.inf)
        for t in range(pos + 1):
            kt = k_cache[kv, t]
            s = np.float32(0.0)
            for e in range(head_dim):
                s += qh[e] * kt[e]
            s *= scaling
            scores[t] = s
            best = max(best, s)
        denom = np.float32(0.0)
        for t in range(pos + 1):
            scores[t] = np.exp(scores[t] - best)
            denom += scores[t]
        for e in range(head_dim):
            out[e] = 0.0
        for t in range(pos + 1):
            w = scores[t] / denom
            vt = v_cache[kv, t]
            for e in range(head_dim):
                out[e] += w * vt[e]


def _head_norm(v, heads, head_dim, weight, eps):
    """RMSNorm of each head's head_dim values of v [heads * head_dim] in place, weight [head_dim] (Qwen3's
    q_norm / k_norm); an empty weight (no q/k norm) leaves v as it is."""
    if weight.shape[0] == 0:
        return
    for h in range(heads):
        o = h * head_dim
        acc = np.float32(0.0)
        for j in range(head_dim):
            acc += v[o + j] * v[o + j]
        inv = np.float32(1.0) / np.sqrt(acc / head_dim + eps)
        for j in range(head_dim):
            v[o + j] = weight[j] * (v[o + j] * inv)


def _add_bias(y, b):
    """y += b when the linear has a bias (b [len(y)]); a bias-free linear passes an empty b."""
    for j in range(b.shape[0]):
        y[j] += b[j]


def _layer(
    h,
    layer,
    pos,
    eps,
    cos,
    sin,
    k_cache,
    v_cache,
    n_heads,
    n_kv,
    head_dim,
    norm_in,
    norm_post,
    q_norm,
    k_norm,
    ws,
    bs,
    xn, q, k, v, att, o, g, u, lut_b, xp, xe, xo,
    permute,
):  # fmt: skip
    """One decoder layer for one token, in place on h [d]; writes K/V of position ``pos``.
    ws: the seven linears' kernel buffers; bs: their biases (empty arrays for none); xn ... xo: the
    ``Scratch`` arrays (numba's parallel lowering cannot follow a record's fields into its loops);
    permute: the sign-sum kernel (nibble tables in registers, or byte tables; see ``primitives.kernels``)."""
    q_w, k_w, v_w, o_w, g_w, u_w, d_w = ws
    q_b, k_b, v_b, o_b, g_b, u_b, d_b = bs
    nc = lut_b.shape[0]  # row chunks (one per thread), each with its own tables
    _rms_norm_jit(h, norm_in, eps, xn)
    for c in numba.prange(nc):
        linear_chunk(c, nc, xn, q_w, q, lut_b[c], xp[c], xe[c], xo[c], permute)
        linear_chunk(c, nc, xn, k_w, k, lut_b[c], xp[c], xe[c], xo[c], permute)
        linear_chunk(c, nc, xn, v_w, v, lut_b[c], xp[c], xe[c], xo[c], permute)
    _add_bias_jit(q, q_b)
    _add_bias_jit(k, k_b)
    _add_bias_jit(v, v_b)
    _head_norm_jit(q, n_heads, head_dim, q_norm, eps)
    _head_norm_jit(k, n_kv, head_dim, k_norm, eps)
    _rope_jit(q, n_heads, head_dim, cos, sin)
    _rope_jit(k, n_kv, head_dim, cos, sin)
    for j in range(n_kv):
        for e in range(head_dim):
            k_cache[layer, j, pos, e] = k[j * head_dim + e]
            v_cache[layer, j, pos, e] = v[j * head_dim + e]
    _attend_jit(q, k_cache[layer], v_cache[layer], pos, n_heads, n_kv, head_dim, att)
    for c in numba.prange(nc):
        linear_chunk(c, nc, att, o_w, o, lut_b[c], xp[c], xe[c], xo[c], permute)
    _add_bias_jit(o, o_b)
    for j in range(h.shape[0]):
        h[j] += o[j]
    _rms_norm_jit(h, norm_post, eps, xn)
    for c in numba.prange(nc):
        linear_chunk(c, nc, xn, g_w, g, lut_b[c], xp[c], xe[c], xo[c], permute)
        linear_chunk(c, nc, xn, u_w, u, lut_b[c], xp[c], xe[c], xo[c], permute)
        lo, hi = chunk_bounds(c, nc, g.shape[0])  # the rows this thread just wrote: SiLU there
        for j in range(lo, hi):
            gj = g[j] + (g_b[j] if g_b.shape[0] else np.float32(0.0))
            uj = u[j] + (u_b[j] if u_b.shape[0] else np.float32(0.0))
            g[j] = gj / (np.float32(1.0) + np.exp(-gj)) * uj
    for c in numba.prange(nc):
        linear_chunk(c, nc, g, d_w, o, lut_b[c], xp[c], xe[c], xo[c], permute)
    _add_bias_jit(o, d_b)
    for j in range(h.shape[0]):
        h[j] += o[j]


_rms_norm_jit = numba.njit(cache=True, nogil=True, fastmath=True)(_rms_norm)
_add_bias_jit = numba.njit(cache=True, nogil=True, fastmath=True)(_add_bias)
_head_norm_jit = numba.njit(cache=True, nogil=True, fastmath=True)(_head_norm)
_rope_jit = numba.njit(cache=True, nogil=True, fastmath=True)(_rope)
_attend_jit = numba.njit(cache=True, nogil=True, fastmath=True, parallel=True)(_attend)
_layer_jit = numba.njit(cache=True, nogil=True, fastmath=True, parallel=True)(_layer)


def _layers(h, pos, eps, cos, sin, k_cache, v_cache, n_heads, n_kv, head_dim, norms, weights, biases, scratch, permute):
    """Every decoder layer for one token, in place on h [d]: one call per step instead of one per
    layer (a call unboxes each of its arrays; numba typed lists pass the layers' ~90 arrays each
    as one object). norms, weights, biases: typed lists with one entry per layer."""
    s = scratch
    for i in range(len(weights)):
        norm_in, norm_post, q_norm, k_norm = norms[i]
        _layer_jit(
            h, i, pos, eps, cos, sin, k_cache, v_cache, n_heads, n_kv, head_dim, norm_in, norm_post, q_norm, k_norm,
            weights[i], biases[i], s.xn, s.q, s.k, s.v, s.att, s.o, s.g, s.u, s.lut_b, s.xp, s.xe, s.xo, permute,
        )  # fmt: skip


_layers_jit = numba.njit(cache=True, nogil=True)(_layers)


def last_logits_only(model: nn.Module) -> dict[str, int]:
    """Keyword arguments that make ``model``'s forward compute the logits of the last position only
    (``logits_to_keep=1``, as transformers' own ``generate`` does in its prefill), or none when the
    model's forward does not take it. A prompt of T tokens then costs one lm_head row, not T."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def _greedy(logits: torch.Tensor) -> int:
    """The index of the largest logit [vocab] (the first on ties, as ``torch.argmax``), by numpy on
    one thread: torch's argmax over a 49k vocabulary goes to its thread pool, slower than numpy's
    single-threaded one at this size."""
    return int(np.argmax(logits.detach().float().numpy()))


def _embedding_rows(embed: nn.Module):
    """token -> its embedding row, float32 [d] (a fresh array): numpy over the table for an fp32
    ``nn.Embedding`` or an ``Int8Embedding`` (its ``row``, the module's own values), the module's
    forward for any other embedding."""
    if isinstance(embed, Int8Embedding) and embed.out_dtype.dtype == torch.float32:
        return embed.row
    if type(embed) is nn.Embedding and embed.weight.dtype == torch.float32:
        table = embed.weight.detach().numpy()
        return lambda token: table[token].copy()
    return lambda token: embed(torch.tensor([[token]]))[0, 0].float().contiguous().numpy().copy()


def _weight(norm: nn.Module | None) -> np.ndarray:
    """A norm's weight as float32, or an empty array for no norm (the kernels skip it)."""
    return np.zeros(0, np.float32) if norm is None else norm.weight.detach().float().contiguous().numpy()


def _bias(mod: nn.Module) -> np.ndarray:
    """The linear's bias as float32 [out], or an empty array when it has none."""
    b = getattr(mod, "bias", None)
    return np.zeros(0, np.float32) if b is None else b.detach().float().contiguous().numpy()


class DecodeEngine:
    """Batch-1 greedy decoding of a packed LLaMA-layout model with one fused numba call per step.

    ``generate(input_ids [1, T], new_tokens)`` returns the greedy tokens; the logits of
    every step equal the model's own forward up to float32 summation order. ``permute`` picks
    the sign-sum kernel (default: nibble tables in registers where the CPU has AVX-512, else byte tables).
    """

    def __init__(
        self, model: nn.Module, max_len: int = 2048, permute: bool = PERMUTE_SIGNS, step_prefill: int = STEP_PREFILL
    ) -> None:
        reason = self.unsupported_reason(model, max_len)
        if reason is not None:
            raise ValueError(f"the decode engine does not serve this model: {reason}")
        cfg = model.config
        adapter = get_adapter(model)
        self.model, self.max_len, self.permute, self.step_prefill = model, max_len, bool(permute), step_prefill
        self.layers = adapter.decoder_layers(model)
        self.embed = model.get_submodule(adapter.embed)
        self.embed_row = _embedding_rows(self.embed)
        self.final_norm = model.get_submodule(adapter.final_norm)
        self.final_weight = self.final_norm.weight.detach().float().numpy()
        self.lm_head = model.get_submodule(adapter.lm_head)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = np.float32(cfg.rms_norm_eps)
        # typed lists: the single numba call of a step receives every layer's buffers as three objects;
        # each linear's KernelBuffers as the plain tuple of its fields (numba's parallel loops take no records)
        self.weights = typed.List(
            [tuple(tuple(layer.get_submodule(k).kernel_buffers(self.permute)) for k in KINDS) for layer in self.layers]
        )
        self.biases = typed.List([tuple(_bias(layer.get_submodule(k)) for k in KINDS) for layer in self.layers])
        self.norms = typed.List(
            [
                (
                    layer.input_layernorm.weight.detach().float().numpy(),
                    layer.post_attention_layernorm.weight.detach().float().numpy(),
                    _weight(getattr(layer.self_attn, "q_norm", None)),
                    _weight(getattr(layer.self_attn, "k_norm", None)),
                )
                for layer in self.layers
            ]
        )
        rotary = model.get_submodule(adapter.rotary)
        with torch.no_grad():
            pos = torch.arange(max_len)[None]
            cos, sin = rotary(torch.zeros(1, dtype=torch.float32), pos)
        self.cos, self.sin = cos[0].float().contiguous().numpy(), sin[0].float().contiguous().numpy()
        shape = (len(self.layers), self.n_kv, max_len, self.head_dim)
        self.k_cache = np.zeros(shape, dtype=np.float32)
        self.v_cache = np.zeros(shape, dtype=np.float32)
        self.scratch = self._scratch()

    @staticmethod
    def unsupported_reason(model: nn.Module, max_len: int = 2048) -> str | None:
        """Why the engine cannot run ``model`` for ``max_len`` positions (None when it can): the model's
        ``Computation`` against the engine's (``runtime.capability.ENGINE``), then its modules."""
        try:
            adapter = get_adapter(model)
        except UnsupportedModelError as err:
            return str(err)
        if adapter.linear_names != KINDS or adapter.rotary is None:
            return "not the LLaMA layout (q/k/v/o, gate/up/down)"
        for layer in adapter.decoder_layers(model):
            for name in KINDS:
                mod = layer.get_submodule(name)
                if not isinstance(mod, PackedPTQ161Linear):
                    return f"{name} is {type(mod).__name__}, not a packed PTQ1.61 linear"
        if next(model.parameters()).device.type != "cpu":
            return "model is not on the CPU"
        mismatches = engine_mismatches(describe(model, adapter), max_len)
        return "; ".join(mismatches) if mismatches else None

    def _scratch(self) -> Scratch:
        d = self.layers[0].input_layernorm.weight.shape[0]
        first = self.layers[0]
        inter = first.get_submodule("mlp.gate_proj").out_features
        f = np.float32

        bufs = [w for layer in self.weights for w in layer]
        groups = max(max(w[SIGN].shape[1] for w in bufs), 1)
        width = max(max(w[CODES].shape[1] for w in bufs), 1)
        nc = kernel_threads()
        q_out = self.n_heads * self.head_dim
        kv_out = self.n_kv * self.head_dim
        return Scratch(
            np.empty(d, f),
            np.empty(q_out, f),
            np.empty(kv_out, f),
            np.empty(kv_out, f),
            np.empty(q_out, f),
            np.empty(d, f),
            np.empty(inter, f),
            np.empty(inter, f),
            np.empty((nc, groups, 32 if self.permute else 256), f),  # nibble or byte tables
            np.empty((nc, 8 * groups), f),
            np.empty((nc, width), f),
            np.empty((nc, width), f),
        )

    @torch.no_grad()
    def _hidden_step(self, token: int, pos: int) -> torch.Tensor:
        """Run one token at position ``pos`` through every decoder layer -> final hidden state [1, 1, d]."""
        h = self.embed_row(token)
        cos, sin = self.cos[pos], self.sin[pos]
        _layers_jit(
            h, pos, self.eps, cos, sin, self.k_cache, self.v_cache, self.n_heads, self.n_kv, self.head_dim,
            self.norms, self.weights, self.biases, self.scratch, self.permute,
        )  # fmt: skip
        return torch.from_numpy(h)[None, None]

    @torch.no_grad()
    def step(self, token: int, pos: int) -> torch.Tensor:
        """Logits [vocab] of the next token after ``token`` at position ``pos`` (cache filled before it)."""
        if pos >= self.max_len:
            raise ValueError(f"position {pos} beyond the engine's max_len {self.max_len}")
        h = self._hidden_step(token, pos)[0, 0].numpy()
        normed = np.empty_like(h)
        _rms_norm_jit(h, self.final_weight, self.eps, normed)
        return self.lm_head(torch.from_numpy(normed)[None, None])[0, 0]

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Run the prompt [1, T] into the cache -> the last position's logits [vocab]: up to ``step_prefill``
        tokens one engine step each, a longer prompt through the model's own forward (its K/V copied in)."""
        from transformers import DynamicCache

        if input_ids.shape[0] != 1:
            raise ValueError("the decode engine runs batch 1")
        n = input_ids.shape[1]
        if n >= self.max_len:
            raise ValueError(f"prompt of {n} tokens does not fit max_len {self.max_len}")
        if n <= self.step_prefill:
            tokens = input_ids[0].tolist()
            for pos, token in enumerate(tokens[:-1]):
                self._hidden_step(token, pos)
            return self.step(tokens[-1], n - 1)
        cache = DynamicCache()
        out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, **last_logits_only(self.model))
        for i, layer in enumerate(cache.layers):
            self.k_cache[i, :, :n] = layer.keys[0].float().numpy()
            self.v_cache[i, :, :n] = layer.values[0].float().numpy()
        return out.logits[0, -1]

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, new_tokens: int) -> tuple[list[int], float, float]:
        """Greedy decoding: (generated ids, prefill seconds, decode seconds). input_ids [1, T]."""
        t0 = time.perf_counter()
        logits = self.prefill(input_ids)
        t1 = time.perf_counter()
        token = _greedy(logits)
        generated = [token]
        pos = input_ids.shape[1]
        for _ in range(new_tokens - 1):
            token = _greedy(self.step(token, pos))
            generated.append(token)
            pos += 1
        return generated, t1 - t0, time.perf_counter() - t1


__all__ = ["STEP_PREFILL", "DecodeEngine", "last_logits_only"]
