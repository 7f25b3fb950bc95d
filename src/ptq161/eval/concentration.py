"""How salient weights line up with salient input channels (paper Fig. 4 / Fig. 10).

PTQ1.61 keeps whole input channels (columns of W [m, n]) at 4 bits, chosen by the
activation statistic. Its error is small when the largest weights sit in those columns.
The statistic here: the share of the top ``top_weights`` fraction of |W| entries whose
input channel is among the top ``top_channels`` fraction by activation. A random
placement gives ``top_channels``; 1.0 means every salient weight is protected.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..calibration import record_input_stats
from ..models import get_adapter


def top_entries_mask(w: torch.Tensor, share: float = 0.01) -> torch.Tensor:
    """Bool [m, n]: the ``share`` largest |w| entries (at least one)."""
    k = max(1, round(share * w.numel()))
    thr = torch.topk(w.abs().flatten(), k).values[-1]
    return w.abs() >= thr


def top_channels(stat: torch.Tensor, share: float = 0.2) -> torch.Tensor:
    """Bool [n]: the ``share`` input channels with the largest activation statistic (at least one)."""
    k = max(1, round(share * stat.numel()))
    mask = torch.zeros(stat.numel(), dtype=torch.bool)
    mask[torch.topk(stat, k).indices] = True
    return mask


def salient_share(w: torch.Tensor, stat: torch.Tensor, top_weights: float = 0.01, channels: float = 0.2) -> float:
    """Share of the top ``top_weights`` |W| entries (W [m, n]) lying in the top ``channels`` input channels.

    ``stat`` [n] is the per-input-channel activation statistic (e.g. mean |x|).
    """
    big = top_entries_mask(w, top_weights)
    return (big[:, top_channels(stat, channels)].sum() / big.sum()).item()


@torch.no_grad()
def layer_statistics(model: nn.Module, windows: torch.Tensor, statistic: str = "mean") -> dict[str, torch.Tensor]:
    """Per decoder linear, its input-channel activation statistic [n] over ``windows`` [N, seqlen].

    Runs the whole model once per window (for models that fit in memory).
    """
    with record_input_stats(get_adapter(model).model_linears(model)) as stats:
        for row in windows:
            model(row[None])
    return {name: s.get(statistic) for name, s in stats.items()}


def concentration_report(
    model: nn.Module, stats: dict[str, torch.Tensor], top_weights: float = 0.01, channels: float = 0.2
) -> dict[str, float]:
    """``salient_share`` of every decoder linear of ``model`` under the given channel statistics."""
    return {
        name: salient_share(model.get_submodule(name).weight.detach().float(), stat, top_weights, channels)
        for name, stat in stats.items()
    }


def save_salient_maps(
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]],
    stats: dict[str, torch.Tensor],
    path: str | Path,
    labels: tuple[str, str] = ("original", "preprocessed"),
    top_weights: float = 0.01,
    channels: float = 0.2,
) -> None:
    """PNG of the top-|W| positions before/after for each layer: ``weights[name] = (W_before, W_after)`` [m, n].

    Columns are sorted by the activation statistic (most salient channels on the left, the
    top ``channels`` share shaded), so weights in protected channels fall in the shaded band.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(weights), 2, figsize=(10, 3.2 * len(weights)), squeeze=False)
    for row, (name, (before, after)) in enumerate(weights.items()):
        order = torch.argsort(stats[name], descending=True)
        k = max(1, round(channels * order.numel()))
        for col, (w, label) in enumerate(zip((before, after), labels, strict=True)):
            ax = axes[row][col]
            big = top_entries_mask(w.float(), top_weights)[:, order]
            ys, xs = torch.nonzero(big, as_tuple=True)
            ax.axvspan(0, k, color="#dde8f5")
            ax.scatter(xs.numpy(), ys.numpy(), s=1, c="#b2182b", marker="s", linewidths=0)
            ax.set_xlim(0, w.shape[1])
            ax.set_ylim(w.shape[0], 0)
            share = big[:, :k].sum().item() / max(big.sum().item(), 1)
            ax.set_title(f"{name} ({label}): {100 * share:.1f}% in top-{round(100 * channels)}% channels", fontsize=8)
            ax.set_xlabel("input channel, sorted by activation", fontsize=7)
            ax.set_ylabel("output row", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
