"""PB-LLM baseline (Shang et al. 2023): 10 % salient weights (unstructured) at 8 bits, the rest binarized,
with GPTQ-style error compensation (intra-block updates)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from ..errors import PTQ161Error
from ..primitives.quant import apply_binary, binarize_rows, rtn_asym_params, rtn_dequantize, rtn_quantize
from .base import MethodConfig
from .gptq_math import gptq_quantize, prepare_hessian
from .layerwise import LayerwiseMethod


@dataclass
class PBLLMConfig(MethodConfig):
    """salient_ratio of the weights (by Hessian saliency w^2 / Hinv_jj^2) kept at salient_bits."""

    salient_ratio: float = option(
        0.1, "share of the weights kept at 8 bits", aliases=("--ratio",), minimum=0, maximum=1, exclusive=True
    )
    salient_bits: int = 8
    damp: float = 0.01
    blocksize: int = 128

    def __post_init__(self) -> None:
        if not 0 <= self.salient_ratio <= 1:
            raise PTQ161Error(f"pbllm salient ratio must be in [0, 1], got {self.salient_ratio}")
        if not 2 <= self.salient_bits <= 8:
            raise PTQ161Error("pbllm salient bits must be in 2..8")


def salient_weights(w: torch.Tensor, hinv: torch.Tensor, ratio: float) -> torch.Tensor:
    """Unstructured mask of the top ``ratio`` weights by w^2 / diag(Hinv)^2: [m, n] bool."""
    k = round(ratio * w.numel())
    if k == 0:
        return torch.zeros_like(w, dtype=torch.bool)
    score = (w / torch.diag(hinv)[None, :]) ** 2
    threshold = torch.topk(score.flatten(), k).values[-1]
    return score >= threshold


def pbllm_layer(w: torch.Tensor, h: torch.Tensor, cfg: PBLLMConfig) -> tuple[torch.Tensor, int]:
    """PB-LLM-quantize W [m, n]; returns (dequantized Q [m, n], number of salient weights)."""
    w, hinv = prepare_hessian(w, h, cfg.damp)
    mask = salient_weights(w, hinv, cfg.salient_ratio)
    full_rows = mask.all(dim=1, keepdim=True)
    # 8-bit parameters over each row's salient weights (the whole row when every weight is salient)
    sal_vals = torch.where(mask, w, torch.zeros_like(w))
    scale, zero = rtn_asym_params(torch.where(full_rows, w, sal_vals), cfg.salient_bits)
    mu, alpha = binarize_rows(w, ~mask)

    def quantize_column(col: torch.Tensor, idx: int) -> torch.Tensor:
        hi = rtn_dequantize(rtn_quantize(col[:, None], scale, zero, cfg.salient_bits), scale, zero)[:, 0]
        lo = apply_binary(col[:, None], mu, alpha)[:, 0]
        return torch.where(mask[:, idx], hi, lo)

    return gptq_quantize(w, hinv, quantize_column, cfg.blocksize), int(mask.sum())


class PBLLM(LayerwiseMethod):
    """PB-LLM on the shared block-wise driver."""

    name = "pbllm"
    config_class = PBLLMConfig
    config: PBLLMConfig

    def quantize_layer(self, w: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, int]]:
        """W [m, n], H [n, n] -> dequantized Q [m, n] and the salient count."""
        q, n_sal = pbllm_layer(w, h, self.config)
        return q, {"salient": n_sal}

    def bits(self, m: int, n: int, counts: dict[str, int]) -> tuple[float, int]:
        """Paper: weight bits (1.7 at 10 %) + 1 mask bit. Stored: + per row 8-bit scale/zero and mu/alpha fp16."""
        b, sal = self.config.salient_bits, counts["salient"]
        weight_bits = (m * n - sal) + b * sal
        paper = weight_bits / (m * n) + 1.0
        return paper, weight_bits + m * n + m * (16 + b) + m * 32
