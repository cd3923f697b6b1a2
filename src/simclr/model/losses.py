"""The contrastive losses of SimCLR: NT-Xent (paper, eq. 1 and Algorithm 1) and the alternatives of its
Table 2, NT-Logistic and margin triplet, with the semi-hard negative mining of its Table 4.

Pure functions. The anchors are the 2n local views; the candidates are the 2M views of the whole
(possibly gathered) batch, so the same code scores one device's anchors against the negatives of
every device: pass the gathered projections and this device's offset into them. Each anchor's own view
is masked out, its positive is the other view of its image, and the other 2M - 2 views are its negatives.

Notation of the docstrings: for an anchor a, s(a, b) is the similarity of a to candidate b: the cosine
similarity with ``l2_normalize=True`` (the paper's default), the raw dot product otherwise (its Table 5
"no l2" rows); p(a) is its positive, N(a) its 2M - 2 negatives, tau the temperature and m the margin.

Everything is computed with tensor operations only (masks, ``torch.where``, reductions): no value is read
back to the host, so each loss compiles as one graph (``torch.compile(fullgraph=True)``); similarities
are computed in at least float32 with autocast turned off around them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "contrastive_accuracy",
    "contrastive_logits",
    "margin_triplet",
    "margin_triplet_with_accuracy",
    "negative_mask",
    "nt_logistic",
    "nt_logistic_with_accuracy",
    "nt_xent",
    "nt_xent_with_accuracy",
    "semi_hard_negative",
]

# Masks a view's similarity with itself; finite so that bf16/fp16 and softmax stay NaN-free.
_SELF_MASK = -1e9


def contrastive_logits(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
    l2_normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity / temperature of each local view against every view of the global batch.

    Args:
        z1, z2: (n, d) projections of the two views of this device's n images.
        temperature: tau > 0.
        z1_all, z2_all: (M, d) projections of the whole batch (all devices); default z1, z2.
        offset: index of this device's first image within z1_all / z2_all.
        l2_normalize: cosine similarity (True) or raw dot product (False) of the projections.

    Returns:
        logits (2n, 2M), in at least float32 (also under autocast), with each view's similarity to
        itself masked out (-1e9), and labels (2n,): the column of each anchor's positive. Row i < n is
        view 1 of image i, row n + i its view 2; column j < M is view 1 of global image j, column M + j
        its view 2.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (n, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1_all is None:
        z1_all, z2_all = z1, z2
    n, m = z1.shape[0], z1_all.shape[0]
    # Similarities in at least float32 even under autocast (which would run the matmul in bf16/fp16):
    # the softmax over thousands of columns, and the semi-hard comparisons, need it.
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(z1.device.type, enabled=False):
        anchors = torch.cat((z1, z2)).to(dtype)
        cands = torch.cat((z1_all, z2_all)).to(dtype)
        if l2_normalize:
            anchors, cands = F.normalize(anchors, dim=1), F.normalize(cands, dim=1)
        logits = anchors @ cands.t() / temperature
    local = torch.arange(n, device=z1.device) + offset
    rows = torch.arange(2 * n, device=z1.device)
    self_cols = torch.cat((local, local + m))
    # new_full, not torch.tensor(..., device=): a host->device copy would block the host every step.
    logits = logits.index_put((rows, self_cols), logits.new_full((), _SELF_MASK))
    labels = torch.cat((local + m, local))
    return logits, labels


def contrastive_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of anchors whose positive scores highest among all candidates (a 0-d tensor).

    logits (2n, 2M), labels (2n,). The positive's logit against the row maximum rather than
    ``argmax == labels``: equal except on exact ties, and with argmax Triton 3.6 (PyTorch 2.11, H100)
    failed to compile the step's final fused reduction ("PassManager::run failed").
    """
    positive = logits.gather(1, labels[:, None]).squeeze(1)
    return (positive >= logits.amax(1)).float().mean()


def negative_mask(labels: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """(2n, 2M) boolean mask of each anchor's negatives: every candidate but its own view and its positive.

    ``labels`` as returned by ``contrastive_logits``; an anchor's own view is the other column of its
    image, labels +- M.
    """
    cols = torch.arange(num_candidates, device=labels.device)
    self_cols = (labels + num_candidates // 2) % num_candidates
    return (cols != labels[:, None]) & (cols != self_cols[:, None])


def semi_hard_negative(sim: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """The similarity of each anchor to its one semi-hard negative (FaceNet, Schroff et al. 2015), (2n,).

    The negative k* chosen for anchor a is the most similar of those strictly less similar than its
    positive: k* = argmax { s(a, k) : k in N(a), s(a, k) < s(a, p(a)) } (FaceNet's "semi-hard": farther
    than the positive, and the closest such). When no negative is less similar than the positive, k* is
    the least similar negative, argmin { s(a, k) : k in N(a) } (all of them are then at least as similar as
    the positive, so this is again the negative whose similarity is closest to the positive's). This is
    the rule of TensorFlow's ``triplet_semihard_loss`` (tf.contrib.losses.metric_learning, later
    ``tfa.losses``), written with similarities instead of distances; falling back to the *easiest* rather
    than the hardest negative avoids the collapse that FaceNet (section 3.2) reports for hardest-negative
    mining early in training.

    Args:
        sim: (2n, 2M) similarities (any increasing function of them, e.g. divided by tau, picks the same).
        positive: (2n,) each anchor's similarity to its positive.
        negatives: (2n, 2M) boolean, ``negative_mask``.

    Returns:
        s(a, k*) for each anchor, with its gradient (which goes to k*'s entry of ``sim``; split evenly
        on exact ties, whose values are equal). Masked reductions only: nothing is read back to the host.
    """
    below = negatives & (sim < positive[:, None])
    hardest_below = torch.where(below, sim, -torch.inf).amax(1)
    easiest = torch.where(negatives, sim, torch.inf).amin(1)
    return torch.where(below.any(1), hardest_below, easiest)


def _mean_over(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-row mean of ``values`` over the True entries of ``mask`` (2n, 2M) -> (2n,)."""
    total = torch.where(mask, values, values.new_zeros(())).sum(1)
    return total / mask.sum(1).clamp_min(1).to(values.dtype)


def _check_negatives(z1: torch.Tensor, z1_all: torch.Tensor | None) -> None:
    m = (z1 if z1_all is None else z1_all).shape[0]
    if m < 2:
        raise ValueError(f"the batch must hold at least 2 images for an anchor to have negatives, got {m}")


# -- NT-Xent ------------------------------------------------------------------------------------------

def nt_xent_with_accuracy(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
    l2_normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The NT-Xent loss (0-d) and the contrastive accuracy (0-d, no gradient); see ``nt_xent``."""
    logits, labels = contrastive_logits(z1, z2, temperature, z1_all, z2_all, offset, l2_normalize)
    loss = F.cross_entropy(logits, labels)
    with torch.no_grad():
        acc = contrastive_accuracy(logits, labels)
    return loss, acc


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
    l2_normalize: bool = True,
) -> torch.Tensor:
    """NT-Xent: mean over all 2n anchors of -log softmax of the positive among the other 2M-1 views.

    l(a) = -log( exp(s(a, p(a)) / tau) / sum_{k != a} exp(s(a, k) / tau) ),  L = mean over the 2n anchors.

    Args:
        z1, z2: (n, d) projections of the two views (need not be normalised).
        temperature: tau > 0.
        z1_all, z2_all, offset: see ``contrastive_logits`` (for negatives gathered across devices).
        l2_normalize: s is the cosine similarity (True, the paper's default) or the raw dot product.

    Returns:
        The loss L of the paper's Algorithm 1, a 0-d tensor.
    """
    return nt_xent_with_accuracy(z1, z2, temperature, z1_all, z2_all, offset, l2_normalize)[0]


# -- NT-Logistic --------------------------------------------------------------------------------------

def nt_logistic_with_accuracy(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
    semi_hard: bool = False,
    l2_normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The NT-Logistic loss (0-d) and the contrastive accuracy (0-d, no gradient); see ``nt_logistic``."""
    logits, labels, positive, negatives = _anchor_pairs(z1, z2, temperature, z1_all, z2_all, offset, l2_normalize)
    if semi_hard:
        negative_term = -F.logsigmoid(-semi_hard_negative(logits, positive, negatives))
    else:
        negative_term = _mean_over(negatives, -F.logsigmoid(-logits))
    return _mean_and_accuracy(-F.logsigmoid(positive) + negative_term, logits, labels)


def nt_logistic(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
    semi_hard: bool = False,
    l2_normalize: bool = True,
) -> torch.Tensor:
    """NT-Logistic (the paper's Table 2: -log sigma(u.v+ / tau) - log sigma(-u.v- / tau)) over all negatives.

    Per anchor a, the positive term plus the *mean* of the negative terms over its negatives:

        l(a) = -log sigma(s(a, p(a)) / tau) - (1 / |N(a)|) sum_{k in N(a)} log sigma(-s(a, k) / tau),

    and L = the mean of l(a) over the 2n anchors (the mean over the rows of a rank, so that averaging
    equal-sized ranks gives the full batch's L). The positive and the negatives weigh equally, as in the
    paper's one-positive/one-negative formula: summing the 2M - 2 negative terms instead would make the
    logistic regression almost all negatives (one positive per 2M - 2), and its scale grow with the batch.

    With ``semi_hard``, only one negative per anchor enters: k* of ``semi_hard_negative`` (the most similar
    negative less similar than the positive; if there is none, the least similar negative), so
    l(a) = -log sigma(s(a, p(a)) / tau) - log sigma(-s(a, k*) / tau).

    Args:
        z1, z2: (n, d) projections of the two views (need not be normalised).
        temperature: tau > 0.
        z1_all, z2_all, offset: see ``contrastive_logits`` (for negatives gathered across devices).
        semi_hard: semi-hard negative mining (the paper's Table 4 "(sh)" rows).
        l2_normalize: s is the cosine similarity (True, the paper's default) or the raw dot product.

    Returns:
        L, a 0-d tensor (at least float32).
    """
    return nt_logistic_with_accuracy(z1, z2, temperature, z1_all, z2_all, offset, semi_hard, l2_normalize)[0]


def _anchor_pairs(z1, z2, temperature, z1_all, z2_all, offset, l2_normalize):
    """What NT-Logistic and margin triplet share: logits (2n, 2M), labels (2n,), each anchor's positive logit
    (2n,) and the mask (2n, 2M) of its negatives."""
    _check_negatives(z1, z1_all)
    logits, labels = contrastive_logits(z1, z2, temperature, z1_all, z2_all, offset, l2_normalize)
    return logits, labels, logits.gather(1, labels[:, None]).squeeze(1), negative_mask(labels, logits.shape[1])


def _mean_and_accuracy(per_anchor: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
    """(mean over the anchors of ``per_anchor``, contrastive accuracy without gradient)."""
    with torch.no_grad():
        acc = contrastive_accuracy(logits, labels)
    return per_anchor.mean(), acc


# -- margin triplet -----------------------------------------------------------------------------------

def margin_triplet_with_accuracy(
    z1: torch.Tensor,
    z2: torch.Tensor,
    margin: float,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
    semi_hard: bool = False,
    l2_normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The margin triplet loss (0-d) and the contrastive accuracy (0-d, no gradient); see ``margin_triplet``."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    sim, labels, positive, negatives = _anchor_pairs(z1, z2, 1.0, z1_all, z2_all, offset, l2_normalize)
    if semi_hard:
        per_anchor = F.relu(semi_hard_negative(sim, positive, negatives) - positive + margin)
    else:
        per_anchor = _mean_over(negatives, F.relu(sim - positive[:, None] + margin))
    return _mean_and_accuracy(per_anchor, sim, labels)


def margin_triplet(
    z1: torch.Tensor,
    z2: torch.Tensor,
    margin: float,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
    semi_hard: bool = False,
    l2_normalize: bool = True,
) -> torch.Tensor:
    """Margin triplet (the paper's Table 2: -max(u.v- - u.v+ + m, 0), maximised) over all negatives.

    Per anchor a, the *mean* over its negatives of the hinge of each triplet (a, p(a), k):

        l(a) = (1 / |N(a)|) sum_{k in N(a)} max(0, s(a, k) - s(a, p(a)) + m),

    and L = the mean of l(a) over the 2n anchors: the mean over all 2n (2M - 2) triplets, FaceNet's
    triplet loss averaged rather than summed so that its scale does not grow with the batch. No
    temperature: the similarities enter unscaled (the paper's formula; tau would only rescale m).

    With ``semi_hard``, only one negative per anchor enters: k* of ``semi_hard_negative`` (the most similar
    negative less similar than the positive; if there is none, the least similar negative), so
    l(a) = max(0, s(a, k*) - s(a, p(a)) + m): non-zero exactly when k* lies within the margin of the
    positive (or above it, in the fallback).

    Args:
        z1, z2: (n, d) projections of the two views (need not be normalised).
        margin: m >= 0.
        z1_all, z2_all, offset: see ``contrastive_logits`` (for negatives gathered across devices).
        semi_hard: semi-hard negative mining (the paper's Table 4 "(sh)" rows).
        l2_normalize: s is the cosine similarity (True, the paper's default) or the raw dot product.

    Returns:
        L, a 0-d tensor (at least float32).
    """
    return margin_triplet_with_accuracy(z1, z2, margin, z1_all, z2_all, offset, semi_hard, l2_normalize)[0]
