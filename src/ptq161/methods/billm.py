"""BiLLM baseline (Huang et al. 2024): structured salient columns with residual binarization,
the rest split into two magnitude groups each binarized per row; compensation between
128-column blocks only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import PTQ161Error
from ..primitives.quant import binarize, residual_binarize
from .base import MethodConfig
from .gptq_math import blockwise_compensate, prepare_hessian
from .layerwise import LayerwiseMethod

COMPENSATION = ("between-blocks", "none")


@dataclass
class BiLLMConfig(MethodConfig):
    """Search up to ``max_salient`` salient columns per block and ``split_points`` magnitude quantiles in [0.1, 0.9].

    ``search="saliency"`` runs both searches on the saliency matrix S = W^2 / diag(Hinv)^2
    as the authors' code does (so the magnitude split is scaled per column by the Hessian);
    ``"weight"`` runs them on W itself, the literal reading of the paper; on smollm2-135m the
    weight reading loses the model's massive activation in block 2 and is far worse
    (benchmarks/results/compare.md). ``compensation="none"`` is the authors' ``disable_gptq`` switch.
    """

    blocksize: int = 128
    damp: float = 0.01
    max_salient: int = 49
    split_points: int = 81
    salient_order: int = 2
    compensation: str = "between-blocks"
    search: str = "saliency"

    def __post_init__(self) -> None:
        if self.max_salient < 1 or self.split_points < 1 or self.blocksize < 2:
            raise PTQ161Error("billm needs max_salient >= 1, split_points >= 1, blocksize >= 2")
        if self.compensation not in COMPENSATION:
            raise PTQ161Error(f"billm compensation must be one of {', '.join(COMPENSATION)}")
        if self.search not in ("weight", "saliency"):
            raise PTQ161Error("billm search must be 'weight' or 'saliency'")


def _sq_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).sum().item()


def split_mask(t: torch.Tensor, rest: torch.Tensor, points: int, ranked: torch.Tensor) -> torch.Tensor:
    """Best magnitude split of the entries of t [m, k] selected by ``rest`` (bool [m, k]).

    Candidate thresholds are ``points`` quantiles in [0.1, 0.9] of ``ranked`` (sorted
    magnitudes). Returns the bool [m, k] mask of the large group (|t| > threshold within
    ``rest``) whose two per-row binarizations give the smallest squared error on t.
    """
    mags = t.abs()
    best, best_err = rest & (mags > mags.max()), float("inf")
    for q in torch.linspace(0.1, 0.9, points).tolist():
        thr = ranked[min(int(q * (ranked.numel() - 1)), ranked.numel() - 1)]
        big = rest & (mags > thr)
        small = rest & ~big
        err = _sq_err(t * rest, binarize(t, small) + binarize(t, big))
        if err < best_err:
            best, best_err = big, err
    return best


def split_binarize(w: torch.Tensor, points: int) -> torch.Tensor:
    """Best two-group (|w| <= t, |w| > t) per-row binarization of w [m, k], t over quantiles in [0.1, 0.9]."""
    if w.shape[1] == 0:
        return w.clone()
    rest = torch.ones_like(w, dtype=torch.bool)
    big = split_mask(w, rest, points, torch.sort(w.abs().flatten()).values)
    return binarize(w, big) + binarize(w, ~big)


def billm_masks(w1: torch.Tensor, h1: torch.Tensor, cfg: BiLLMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Salient columns (bool [b]) and the large group of the others (bool [m, b]) of block W1 [m, b].

    Columns are ranked by the Hessian saliency sum_i W_ij^2 / [Hinv]_jj^2. With
    ``search="weight"`` the searches minimise the error of approximating W1 itself; with
    ``search="saliency"`` (what the reference code does) they approximate the saliency
    matrix S = W1^2 / diag^2, order-2 for both groups while counting salient columns.
    """
    sal_score = w1**2 / torch.diag(h1)[None, :] ** 2
    order = torch.argsort(sal_score.sum(dim=0), descending=True)
    t = w1 if cfg.search == "weight" else sal_score
    rest_order = 1 if cfg.search == "weight" else cfg.salient_order
    best_k, best_err = 1, float("inf")
    for k in range(1, min(cfg.max_salient, w1.shape[1] - 1) + 1):
        sal = torch.zeros(w1.shape[1], dtype=torch.bool)
        sal[order[:k]] = True
        err = _sq_err(t[:, sal], residual_binarize(t[:, sal], None, cfg.salient_order))
        err += _sq_err(t[:, ~sal], residual_binarize(t[:, ~sal], None, rest_order))
        if err < best_err:
            best_k, best_err = k, err
    sal = torch.zeros(w1.shape[1], dtype=torch.bool)
    sal[order[:best_k]] = True
    rest = (~sal)[None, :].expand_as(w1)
    if cfg.search == "weight":
        ranked = torch.sort(t[:, ~sal].abs().flatten()).values
    else:
        ranked = torch.sort((t * rest).abs().flatten()).values
    return sal, split_mask(t, rest, cfg.split_points, ranked)


def billm_block(w1: torch.Tensor, h1: torch.Tensor, cfg: BiLLMConfig) -> tuple[torch.Tensor, int]:
    """Quantize one column block W1 [m, b] (Hinv block [b, b]); returns (Q1 [m, b], salient columns)."""
    sal, big = billm_masks(w1, h1, cfg)
    small = (~sal)[None, :] & ~big
    q1 = residual_binarize(w1, sal[None, :].expand_as(w1), cfg.salient_order)
    q1 = q1 + binarize(w1, small) + binarize(w1, big)
    return q1, int(sal.sum())


BlockQuantizer = Callable[[torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, int]]


def billm_layer(
    w: torch.Tensor, h: torch.Tensor, cfg: BiLLMConfig, block_quantizer: BlockQuantizer = billm_block
) -> tuple[torch.Tensor, int, int]:
    """BiLLM-quantize W [m, n]; returns (Q [m, n], total salient columns, number of blocks).

    ``block_quantizer(W1 [m, b], Hinv1 [b, b], cfg) -> (Q1, salient columns)`` quantizes one
    column block (``billm_block``; ARB-LLM swaps in its own binarizers).
    """
    w, hinv = prepare_hessian(w, h, cfg.damp)
    salient = {"cols": 0, "blocks": 0}

    def quantize_block(w1: torch.Tensor, h1: torch.Tensor, _start: int) -> torch.Tensor:
        q1, k = block_quantizer(w1, h1, cfg)
        salient["cols"] += k
        salient["blocks"] += 1
        return q1

    if cfg.compensation == "none":
        b = cfg.blocksize
        starts = range(0, w.shape[1], b)
        q = torch.cat([quantize_block(w[:, i : i + b], hinv[i : i + b, i : i + b], i) for i in starts], dim=1)
    else:
        q = blockwise_compensate(w, hinv, quantize_block, cfg.blocksize)
    return q, salient["cols"], salient["blocks"]


class BiLLM(LayerwiseMethod):
    """BiLLM on the shared block-wise driver."""

    name = "billm"
    config_class = BiLLMConfig
    config: BiLLMConfig

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
