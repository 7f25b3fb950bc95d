"""ARB-LLM (Li et al., ICLR 2025), its RC variant, on BiLLM's structure.

Alternating refined binarization with a row and a column scale per binarized part
(``arb_rc_binarize`` / ``arb_rc_residual2``): the salient columns get a second-order
binarization, the two magnitude groups of the other columns one each; masks, the
salient-column search and the compensation between 128-column blocks are BiLLM's
(``ptq161.methods.billm``). The column-group bitmap refinement of the paper (CGB) is not
included: the split is BiLLM's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PTQ161Error
from ..primitives.quant import arb_rc_binarize, arb_rc_residual2
from .billm import BiLLM, BiLLMConfig, billm_layer, billm_masks


@dataclass
class ARBConfig(BiLLMConfig):
    """BiLLM's settings plus ``iters`` alternating refinement rounds (the paper's 15)."""

    iters: int = 15

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iters < 0:
            raise PTQ161Error("arb needs iters >= 0")
        if self.salient_order != 2:
            raise PTQ161Error("arb binarizes the salient columns in second order only (salient_order 2)")


def arb_block(w1: torch.Tensor, h1: torch.Tensor, cfg: ARBConfig) -> tuple[torch.Tensor, int]:
    """ARB-RC of one column block W1 [m, b] with BiLLM's masks; returns (Q1 [m, b], salient columns)."""
    sal, big = billm_masks(w1, h1, cfg)
    sal_mask = sal[None, :].expand_as(w1)
    small = (~sal)[None, :] & ~big
    q1 = arb_rc_residual2(w1, sal_mask, cfg.iters)
    q1 = q1 + arb_rc_binarize(w1, small, cfg.iters) + arb_rc_binarize(w1, big, cfg.iters)
    return q1, int(sal.sum())


class ARB(BiLLM):
    """ARB-LLM_RC on the shared block-wise driver (dense "fake-quant" output)."""

    name = "arb"
    config_class = ARBConfig
    config: ARBConfig

    def quantize_layer(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, int]]:
        """W [m, n], H [n, n] -> dequantized Q [m, n] and the salient-column counts."""
        q, cols, blocks = billm_layer(w, h, self.config, arb_block)
        return q, {"salient_cols": cols, "blocks": blocks}

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """Paper: 1 + 1.1 (as BiLLM). Stored: signs, 2nd-order signs of the salient columns, the group bitmap
        of the others, a column mask; per block and row 4 fp16 row scales (2 orders + 2 groups), and per
        column 2 fp16 column scales (its 2 orders if salient, else its 2 groups); no means."""
        k, blocks = counts["salient_cols"], counts["blocks"]
        stored = m * n + m * k + m * (n - k) + n + blocks * m * 4 * 16 + n * 2 * 16
        return 2.1, stored
