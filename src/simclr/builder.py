"""The SimCLR model: encoder f, projection head g, NT-Xent, and an optional online linear probe.

Both views of a batch go through the encoder as one batch of 2N, so BatchNorm statistics are
computed over both views together, as in the official implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simclr.heads import ProjectionHead
from simclr.losses import nt_xent_with_accuracy
from simclr.models import ResNet, build_encoder

__all__ = ["SimCLR", "build_simclr"]


class SimCLR(nn.Module):
    """Encoder + projection head trained with NT-Xent.

    Args:
        encoder: maps images (B, 3, H, W) to h (B, num_features); has ``num_features``.
        head: maps h to z (B, out_dim).
        temperature: tau of NT-Xent.
        num_classes: when > 0, a linear classifier on the detached h is trained alongside (the
            official code's linear evaluation while pretraining); it never changes the encoder.
    """

    def __init__(self, encoder: ResNet, head: nn.Module, temperature: float, num_classes: int = 0):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.temperature = temperature
        self.online = nn.Linear(encoder.num_features, num_classes) if num_classes > 0 else None

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor | None = None, gather=None,
                rank: int = 0) -> dict[str, torch.Tensor]:
        """Views x1, x2 (N, 3, S, S) of the same N images, labels (N,) or None.

        ``gather`` (e.g. ``simclr.distributed.gather_with_grad``) collects the projections of every
        device, so this device's anchors meet the whole global batch as negatives; ``rank`` places
        this device's images in it. Returns a dict with ``loss`` (to minimise: NT-Xent plus the
        online probe's cross-entropy), ``contrastive_loss``, ``contrastive_acc`` and, with labels,
        ``online_loss``, ``online_acc``.
        """
        n = x1.shape[0]
        h = self.encoder(torch.cat((x1, x2)))
        z = self.head(h)
        loss, acc = self.contrastive(z[:n], z[n:], gather, rank)
        out = {"contrastive_loss": loss.detach(), "contrastive_acc": acc}
        if self.online is not None and labels is not None:
            h_ = h.detach()
            logits = self.online(h_.to(torch.promote_types(h_.dtype, torch.float32)))
            y = labels.repeat(2)
            ce = F.cross_entropy(logits, y)
            out["online_loss"] = ce.detach()
            out["online_acc"] = (logits.argmax(1) == y).float().mean().detach()
            loss = loss + ce
        out["loss"] = loss
        return out

    def contrastive(self, z1: torch.Tensor, z2: torch.Tensor, gather=None, rank: int = 0):
        """NT-Xent and contrastive accuracy of local projections z1, z2 (n, d) against the global batch."""
        if gather is None:
            return nt_xent_with_accuracy(z1, z2, self.temperature)
        return nt_xent_with_accuracy(z1, z2, self.temperature, gather(z1), gather(z2), offset=rank * z1.shape[0])


def build_simclr(
    arch: str,
    width: float,
    cifar_stem: bool,
    head_layers: int,
    head_hidden: int,
    out_dim: int,
    head_bn: bool,
    temperature: float,
    num_classes: int = 0,
    zero_init_residual: bool = True,
) -> SimCLR:
    """Assemble a SimCLR model from plain settings (see ``simclr.config``)."""
    encoder = build_encoder(arch, width=width, cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)
    head = ProjectionHead(encoder.num_features, head_layers, head_hidden or encoder.num_features, out_dim, head_bn)
    return SimCLR(encoder, head, temperature, num_classes)
