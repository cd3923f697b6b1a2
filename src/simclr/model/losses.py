"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (paper, eq. 1 and Algorithm 1).

Pure functions. The anchors are the 2n local views; the candidates are the 2M views of the whole
(possibly gathered) batch, so the same code scores one device's anchors against the negatives of
every device: pass the gathered projections and this device's offset into them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["contrastive_logits", "nt_xent", "nt_xent_with_accuracy", "contrastive_accuracy"]

# Masks a view's similarity with itself; finite so that bf16/fp16 and softmax stay NaN-free.
_SELF_MASK = -1e9


def contrastive_logits(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-similarity logits of each local view against every view of the global batch.

    Args:
        z1, z2: (n, d) projections of the two views of this device's n images.
        temperature: tau > 0.
        z1_all, z2_all: (M, d) projections of the whole batch (all devices); default z1, z2.
        offset: index of this device's first image within z1_all / z2_all.

    Returns:
        logits (2n, 2M) with each view's similarity to itself masked out, and labels (2n,): the
        column of each anchor's positive. Row i < n is view 1 of image i, row n + i its view 2;
        column j < M is view 1 of global image j, column M + j its view 2.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (n, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1_all is None:
        z1_all, z2_all = z1, z2
    n, m = z1.shape[0], z1_all.shape[0]
    # Similarities in at least float32 even under autocast: the softmax over thousands of columns needs it.
    dtype = torch.promote_types(z1.dtype, torch.float32)
    anchors = F.normalize(torch.cat((z1, z2)).to(dtype), dim=1)
    cands = F.normalize(torch.cat((z1_all, z2_all)).to(dtype), dim=1)
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


def nt_xent_with_accuracy(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The NT-Xent loss (0-d) and the contrastive accuracy (0-d, no gradient); see ``nt_xent``."""
    logits, labels = contrastive_logits(z1, z2, temperature, z1_all, z2_all, offset)
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
) -> torch.Tensor:
    """NT-Xent: mean over all 2n anchors of -log softmax of the positive among the other 2M-1 views.

    Args:
        z1, z2: (n, d) projections of the two views (need not be normalised).
        temperature: tau > 0.
        z1_all, z2_all, offset: see ``contrastive_logits`` (for negatives gathered across devices).

    Returns:
        The loss L of the paper's Algorithm 1, a 0-d tensor.
    """
    return nt_xent_with_accuracy(z1, z2, temperature, z1_all, z2_all, offset)[0]
