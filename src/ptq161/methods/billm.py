"""BiLLM baseline (Huang et al. 2024): structured salient columns with residual binarization,
the rest split into two magnitude groups each binarized per row; compensation between
128-column blocks only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PTQ161Error
from .base import MethodConfig, register_method
from .gptq_math import blockwise_compensate, prepare_hessian
from .layerwise import LayerwiseMethod
from .quant_math import binarize, residual_binarize


@dataclass
class BiLLMConfig(MethodConfig):
    """Search up to ``max_salient`` salient columns per block and ``split_points`` magnitude quantiles in [0.1, 0.9]."""

    blocksize: int = 128
    damp: float = 0.01
    max_salient: int = 49
    split_points: int = 81
    salient_order: int = 2

    def __post_init__(self) -> None:
        if self.max_salient < 1 or self.split_points < 1 or self.blocksize < 2:
            raise PTQ161Error("billm needs max_salient >= 1, split_points >= 1, blocksize >= 2")


def _sq_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).sum().item()


def split_binarize(w: torch.Tensor, points: int) -> torch.Tensor:
    """Best two-group (|w| <= t, |w| > t) per-row binarization of w [m, k], t over quantiles in [0.1, 0.9]."""
    if w.shape[1] == 0:
        return w.clone()
    mags = w.abs()
    ranked = torch.sort(mags.flatten()).values
    best, best_err = binarize(w), float("inf")
    for q in torch.linspace(0.1, 0.9, points).tolist():
        t = ranked[min(int(q * (ranked.numel() - 1)), ranked.numel() - 1)]
        inner = mags <= t
        approx = binarize(w, inner) + binarize(w, ~inner)
        err = _sq_err(w, approx)
        if err < best_err:
            best, best_err = approx, err
    return best


def billm_block(w1: torch.Tensor, h1: torch.Tensor, cfg: BiLLMConfig) -> tuple[torch.Tensor, int]:
    """Quantize one column block W1 [m, b] (Hinv block [b, b]); returns (Q1 [m, b], salient columns)."""
    score = (w1**2 / torch.diag(h1)[None, :] ** 2).sum(dim=0)
    order = torch.argsort(score, descending=True)
    best_k, best_err = 1, float("inf")
    for k in range(1, min(cfg.max_salient, w1.shape[1] - 1) + 1):
        sal = torch.zeros(w1.shape[1], dtype=torch.bool)
        sal[order[:k]] = True
        err = _sq_err(w1[:, sal], residual_binarize(w1[:, sal], None, cfg.salient_order))
        err += _sq_err(w1[:, ~sal], binarize(w1[:, ~sal]))
        if err < best_err:
            best_k, best_err = k, err
    sal = torch.zeros(w1.shape[1], dtype=torch.bool)
    sal[order[:best_k]] = True
    q1 = torch.empty_like(w1)
    q1[:, sal] = residual_binarize(w1[:, sal], None, cfg.salient_order)
    q1[:, ~sal] = split_binarize(w1[:, ~sal], cfg.split_points)
    return q1, best_k


def billm_layer(w: torch.Tensor, h: torch.Tensor, cfg: BiLLMConfig) -> tuple[torch.Tensor, int, int]:
    """BiLLM-quantize W [m, n]; returns (Q [m, n], total salient columns, number of blocks)."""
    w, hinv = prepare_hessian(w, h, cfg.damp)
    salient = {"cols": 0, "blocks": 0}

    def quantize_block(w1: torch.Tensor, h1: torch.Tensor, _start: int) -> torch.Tensor:
        q1, k = billm_block(w1, h1, cfg)
        salient["cols"] += k
        salient["blocks"] += 1
        return q1

    q = blockwise_compensate(w, hinv, quantize_block, cfg.blocksize)
    return q, salient["cols"], salient["blocks"]


@register_method
class BiLLM(LayerwiseMethod):
    """BiLLM on the shared block-wise driver."""

    name = "billm"
    config_class = BiLLMConfig
    config: BiLLMConfig
    paper_label = "1 (+1.1)"

    def quantize_layer(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, int]]:
        """W [m, n], H [n, n] -> dequantized Q [m, n] and the salient-column counts."""
        q, cols, blocks = billm_layer(w, h, self.config)
        return q, {"salient_cols": cols, "blocks": blocks}

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """Paper: 1 + 1.1. Stored: signs, 2nd-order signs of salient columns, group bitmap of the others,
        a column mask per block, and per row and block (mu, alpha) fp16 for 2 orders + 2 groups."""
        k, blocks = counts["salient_cols"], counts["blocks"]
        stored = m * n + (self.config.salient_order - 1) * m * k + m * (n - k) + n + blocks * m * 4 * 32
        return 2.1, stored
