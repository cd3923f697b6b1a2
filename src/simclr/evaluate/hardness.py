"""Where NT-Xent puts its gradient among an anchor's negatives (the paper's section 5.1 and Table 2).

For an anchor a with logits l_k = s(a, k) / tau over its 2M - 1 candidates, the gradient of its NT-Xent term
with respect to the similarity of a negative k is p_k / tau, where p = softmax(l): each negative is pushed
away in proportion to its softmax weight, so the most similar ("hardest") negatives get the most. A lower
tau sharpens p and concentrates the gradient on fewer negatives; its Table 5 shows this as the entropy of p.
``negative_gradient_share`` measures it on a model's own projections; ``hardness_of_run`` does so for a
pretraining run on two views (its own augmentation) of a batch of its training images, the networks in eval mode
(BatchNorm with its running statistics, where training normalised with the batch's).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from simclr.model.losses import contrastive_logits, negative_mask

__all__ = ["FRACTIONS", "hardness_of_run", "negative_gradient_share", "share_at", "softmax_entropy"]

FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5)  # shares of the hardest negatives summarised in a study's results


def negative_gradient_share(z1: torch.Tensor, z2: torch.Tensor, temperature: float, l2_normalize: bool = True) -> torch.Tensor:
    """Cumulative share of the gradient that NT-Xent sends to the negatives, hardest first.

    Args:
        z1, z2: (n, d) projections of two views of n images (n >= 2).
        temperature: tau.
        l2_normalize: cosine similarities (True) or raw dot products, as in ``simclr.model.losses``.

    Returns:
        float64 (2n - 2,): entry k - 1 is the mean over the 2n anchors of the fraction of the anchor's total
        gradient on negative similarities, sum_k p_k / tau, that its k most similar negatives receive. It
        rises from the hardest negative's share to 1; uniform weights would give k / (2n - 2).
    """
    if z1.shape[0] < 2:
        raise ValueError(f"need at least 2 images (an anchor needs a negative), got {z1.shape[0]}")
    logits, labels = contrastive_logits(z1.double(), z2.double(), temperature, l2_normalize=l2_normalize)
    neg = negative_mask(labels, logits.shape[1])
    p = logits.softmax(1)[neg].view(logits.shape[0], -1)  # (2n, 2n - 2): each row's negatives, in column order
    p = p.sort(1, descending=True).values  # softmax is monotone in the logit: hardest first
    return (p.cumsum(1) / p.sum(1, keepdim=True)).mean(0)


def softmax_entropy(z1: torch.Tensor, z2: torch.Tensor, temperature: float, l2_normalize: bool = True) -> float:
    """Mean over the 2n anchors of the entropy (nats) of the softmax over their 2n - 1 candidates (the positive
    and the negatives): the paper's Table 5 "Entropy" column (at most ln(2n - 1))."""
    logits, labels = contrastive_logits(z1.double(), z2.double(), temperature, l2_normalize=l2_normalize)
    n2 = logits.shape[0]
    keep = negative_mask(labels, logits.shape[1])
    keep[torch.arange(n2), labels] = True  # the positive is a candidate too
    lp = logits[keep].view(n2, -1).log_softmax(1)
    return float(-(lp.exp() * lp).sum(1).mean())


def share_at(curve: torch.Tensor, fraction: float) -> float:
    """The share carried by the hardest ``fraction`` of the negatives (at least one of them)."""
    k = max(1, math.ceil(fraction * len(curve) - 1e-9))  # 0.1 x 30 is 3.0000000000000004 in floating point
    return float(curve[k - 1])


def hardness_of_run(run: str | Path, data, device: torch.device | str = "cpu", seed: int = 0,
                    batch_size: int | None = None) -> dict:
    """NT-Xent's gradient shares and softmax entropy for a pretraining run's encoder and head, on two views
    (the run's own augmentation) of ``batch_size`` (default: the run's batch size) images of ``data`` (an
    ImageSet) drawn with ``seed``, at the run's temperature and normalisation.

    Returns {"curve": [share of the k hardest, k = 1 .. 2B - 2], "hard_share_1pct": ..., (5, 10, 25, 50 %),
    "entropy": nats, "max_entropy": ln(2B - 1), "batch": B}."""
    from simclr.checkpoint import load_run
    from simclr.config import as_saved, config_from_dict
    from simclr.data.augment import SimCLRAugment

    pre = load_run(run)
    cfg = config_from_dict(as_saved(pre.config))
    b = min(batch_size or cfg.train.batch_size, len(data))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:b].sort().values
    aug = SimCLRAugment(pre.image_size, cfg.augment)
    device = torch.device(device)
    enc, head = pre.encoder.to(device).eval(), pre.head.to(device).eval()
    x = data.get(idx).to(device)
    g_views = g if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        v1, v2 = aug.views(x, g_views)
        z1, z2 = head(enc(v1)), head(enc(v2))
    tau, l2 = cfg.loss.temperature, cfg.loss.l2_normalize
    curve = negative_gradient_share(z1, z2, tau, l2)
    res = {"curve": curve.tolist(), "entropy": softmax_entropy(z1, z2, tau, l2), "max_entropy": math.log(2 * b - 1), "batch": b}
    for f in FRACTIONS:
        res[f"hard_share_{round(100 * f)}pct"] = share_at(curve, f)
    return res
