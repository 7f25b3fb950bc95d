"""PNG figures of quantization results (matplotlib, headless): loss curves, salient-channel maps, bits vs perplexity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """The points (label, bits, ppl) that no other point beats on both (fewer or equal bits and lower or equal
    perplexity, one of them strictly), sorted by bits."""
    front = []
    for p in points:
        dominated = any(q[1] <= p[1] and q[2] <= p[2] and (q[1] < p[1] or q[2] < p[2]) for q in points if q is not p)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p[1])


def pareto_png(points: Sequence[tuple[str, float, float]], path: str | Path, title: str, ylabel: str) -> None:
    """Perplexity (log scale) against true bits per weight, one labelled point per (label, bits, ppl); the
    Pareto front is drawn as a step line. Non-finite perplexities are left out."""
    plt = _pyplot()
    pts = [p for p in points if p[2] == p[2] and p[2] not in (float("inf"),)]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    front = pareto_front(pts)
    ax.plot([p[1] for p in front], [p[2] for p in front], "-", color="#bbbbbb", zorder=1, drawstyle="steps-post")
    for label, bits, ppl in pts:
        colour = "#b2182b" if label.startswith("ptq161") else "#2166ac"
        ax.scatter([bits], [ppl], s=28, color=colour, zorder=2)
        ax.annotate(label, (bits, ppl), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("true bits per weight (everything stored for the decoder linears)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curves_png(block_logs: Sequence[dict], path: str | Path, title: str) -> bool:
    """Per-block training loss by epoch (left) and each block's output error after quantization (right).

    Blocks without ``loss_by_epoch`` contribute their first and last epoch's loss when logged.
    Returns False (nothing written) when the logs hold neither curve nor output error.
    """
    curves = []
    for log in block_logs:
        if "loss_by_epoch" in log:
            curves.append(list(log["loss_by_epoch"]))
        elif "loss_first_epoch" in log:
            curves.append([log["loss_first_epoch"], log["loss_last_epoch"]])
    errs = [log["rel_mse_out"] for log in block_logs if "rel_mse_out" in log]
    if not curves and not errs:
        return False
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("viridis")
    for i, c in enumerate(curves):
        left.plot(range(1, len(c) + 1), c, color=cmap(i / max(1, len(curves) - 1)), linewidth=1)
    left.set_xlabel("epoch")
    left.set_ylabel("block training loss")
    left.set_yscale("log")
    left.set_title("training loss, one line per block (dark = first)" if curves else "no block training", fontsize=8)
    right.plot(range(len(errs)), errs, "o-", markersize=3)
    right.set_xlabel("block")
    right.set_ylabel("relative MSE of the block output")
    right.set_yscale("log")
    right.set_title("output error after quantization", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def salient_map_png(maps: dict[str, torch.Tensor], path: str | Path, title: str) -> None:
    """One panel per linear kind: the salient (4-bit) input channels of each block, ``maps[kind]`` bool
    [blocks, n] (white = salient)."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(maps), 1, figsize=(10, 1.2 + 1.1 * len(maps)), squeeze=False)
    for ax, (kind, m) in zip(axes[:, 0], maps.items(), strict=True):
        ax.imshow(m.float().numpy(), aspect="auto", interpolation="nearest", cmap="gray")
        share = m.float().mean().item()
        ax.set_title(f"{kind}: salient input channels per block ({100 * share:.1f}% of channels)", fontsize=8)
        ax.set_ylabel("block", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[-1][0].set_xlabel("input channel", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
