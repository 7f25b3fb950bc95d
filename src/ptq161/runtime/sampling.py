"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p, seeded.

Pure numpy on one thread (a 49k-152k vocabulary is a few hundred microseconds), so the fused engine
keeps its speed when sampling. Greedy (``temperature == 0``) is ``argmax``, the first index on ties,
exactly as the engine's greedy decoding always was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PTQ161Error


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. ``temperature`` 0 is greedy (the other fields are then unused); ``top_k`` 0 and
    ``top_p`` 1 keep every token; ``seed`` makes a sampled run repeatable (None: a fresh random seed)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise PTQ161Error(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise PTQ161Error(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise PTQ161Error(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when tokens are the argmax (temperature 0)."""
        return self.temperature == 0.0

    def rng(self) -> np.random.Generator:
        """The generator for one request (seeded when ``seed`` is set)."""
        return np.random.default_rng(self.seed)


GREEDY = Sampling()


def filtered_probs(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """The sampling distribution over the vocabulary, float64 [vocab]: softmax(logits / temperature),
    then only the ``top_k`` most likely tokens, then the smallest set of most likely tokens whose mass
    reaches ``top_p`` (the most likely token always stays), renormalised. logits: float [vocab]."""
    z = logits.astype(np.float64) / s.temperature
    keep = np.ones(z.shape[0], dtype=bool)
    if 0 < s.top_k < z.shape[0]:
        kth = np.partition(z, -s.top_k)[-s.top_k]
        keep &= z >= kth
    z = np.where(keep, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if s.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        mass = np.cumsum(p[order])
        cut = int(np.searchsorted(mass, s.top_p)) + 1  # tokens up to and including the one reaching top_p
        drop = order[cut:]
        p[drop] = 0.0
        p /= p.sum()
    return p


def next_token(logits: torch.Tensor | np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    """The next token id from logits [vocab]: argmax when greedy, else a draw from ``filtered_probs``."""
    x = logits.detach().float().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float32)
    if s.greedy:
        return int(np.argmax(x))
    p = filtered_probs(x, s)
    return int(rng.choice(p.shape[0], p=p))


__all__ = ["GREEDY", "Sampling", "filtered_probs", "next_token"]
