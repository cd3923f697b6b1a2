"""Pictures of what the model does: loss curves and augmented view pairs (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["plot_metrics", "plot_view_pairs"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(records: list[dict], path: str | Path) -> None:
    """Loss, contrastive accuracy and (when present) kNN / online accuracy per epoch."""
    plt = _plt()
    ep = [r["epoch"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(ep, [r["loss"] for r in records], marker="o")
    axes[0].set(xlabel="epoch", ylabel="NT-Xent loss", title="pretraining loss")
    axes[1].plot(ep, [r["contrastive_acc"] for r in records], marker="o", label="contrastive acc")
    for key, label in (("online_acc", "online linear acc"), ("knn_top1", "kNN top-1")):
        pts = [(r["epoch"], r[key]) for r in records if key in r]
        if pts:
            axes[1].plot(*zip(*pts), marker="s", label=label)
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracies", ylim=(0, 1))
    axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_view_pairs(images: torch.Tensor, augment, path: str | Path, seed: int = 0) -> None:
    """A grid: each row shows an original image (uint8 (3, H, W)) and two augmented views."""
    plt = _plt()
    g = torch.Generator().manual_seed(seed)
    v1, v2 = augment(images, g), augment(images, g)
    n = images.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(4.5, 1.5 * n))
    axes = axes.reshape(n, 3)
    for i in range(n):
        for j, (img, title) in enumerate(((images[i].float() / 255, "original"), (v1[i], "view 1"), (v2[i], "view 2"))):
            axes[i, j].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
