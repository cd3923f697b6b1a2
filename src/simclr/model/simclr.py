"""The SimCLR model: encoder f, projection head g, a contrastive loss, and an optional online linear probe.

The loss is NT-Xent (the paper's) or one of its Table 2 alternatives, NT-Logistic and margin triplet
(``simclr.model.losses``), chosen by ``loss.name``.

Both views of a batch go through the encoder as one batch of 2N, so BatchNorm statistics are
computed over both views together, as in the official implementation. The forward pass is made of
three public pieces (``embed``, ``contrastive``, ``online``) that the gradient-cached training step
(``simclr.train.step``) reuses, so there is one forward pass in the package.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from simclr.model.head import ProjectionHead
from simclr.model.losses import (
    margin_triplet_with_accuracy,
    nt_logistic_with_accuracy,
    nt_xent_with_accuracy,
)
from simclr.model.resnet import ResNet, build_encoder

if TYPE_CHECKING:
    from simclr.config import Config

__all__ = ["LOSSES", "SimCLR"]

LOSSES = ("nt_xent", "nt_logistic", "margin_triplet", "supervised")


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Up-cast half precision to float32; leave float32/float64 as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class SimCLR(nn.Module):
    """Encoder + projection head trained with a contrastive loss (NT-Xent by default).

    Args:
        encoder: maps images (B, 3, H, W) to h (B, num_features); has ``num_features``.
        head: maps h to z (B, out_dim).
        temperature: tau of NT-Xent and NT-Logistic (margin triplet has none).
        num_classes: when > 0, a linear classifier on the detached h is trained alongside (the
            official code's linear evaluation while pretraining); it never changes the encoder.
        objective_scale: what is minimised is this times the contrastive loss L: 2 is the official
            objective (tf2/objective.py: loss_a + loss_b, the sum of both directions' means), 1 the
            paper's L. The scale matters under LARS: weight decay is added to the gradient, and BN and
            bias parameters are not adapted, so their steps scale with it. Metrics always report L.
        loss_name: ``nt_xent`` (the paper's), ``nt_logistic`` or ``margin_triplet`` (its Table 2); the
            formulas are documented in ``simclr.model.losses``.
        l2_normalize: similarities are cosine similarities (True, the paper's default) or raw dot
            products (its Table 5 "no l2" rows), for every loss.
        semi_hard: semi-hard negative mining (Table 4's "(sh)" rows); only for nt_logistic and
            margin_triplet.
        margin: m of margin_triplet.

    With ``loss_name="supervised"`` the model is the paper's supervised baseline (its Table 1): the classifier
    on h (``num_classes`` > 0, no projection head) is trained with the cross-entropy of both views' labels and
    its gradient reaches the encoder; ``contrastive_loss`` and ``contrastive_acc`` then report that
    cross-entropy and the classifier's accuracy on the training views.
    """

    def __init__(self, encoder: ResNet, head: nn.Module, temperature: float, num_classes: int = 0,
                 objective_scale: float = 1.0, *, loss_name: str = "nt_xent", l2_normalize: bool = True,
                 semi_hard: bool = False, margin: float = 0.5):
        super().__init__()
        if loss_name not in LOSSES:
            raise ValueError(f"unknown loss {loss_name!r}: expected one of {', '.join(LOSSES)}")
        if loss_name == "supervised" and any(True for _ in head.parameters()):
            raise ValueError("the supervised loss classifies h: give a head without parameters (head.num_layers 0)")
        if semi_hard and loss_name == "nt_xent":
            raise ValueError("semi-hard negative mining applies to nt_logistic and margin_triplet, not nt_xent "
                             "(NT-Xent weighs its negatives by their hardness already)")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if loss_name == "supervised" and num_classes <= 0:
            raise ValueError("the supervised loss needs labelled images (num_classes > 0)")
        self.encoder = encoder
        self.head = head
        self.temperature = temperature
        self.objective_scale = float(objective_scale)
        self.loss_name = loss_name
        self.l2_normalize = bool(l2_normalize)
        self.semi_hard = bool(semi_hard)
        self.margin = float(margin)
        self.online = nn.Linear(encoder.num_features, num_classes) if num_classes > 0 else None

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int = 0) -> SimCLR:
        """Build from a resolved config (``simclr.config.resolve``): its model, head and loss sections."""
        if cfg.model.cifar_stem is None:
            raise ValueError("model.cifar_stem is still auto: resolve the config for an image size first")
        encoder = build_encoder(**dataclasses.asdict(cfg.model))
        head = ProjectionHead.from_config(encoder.num_features, cfg.head)
        loss = cfg.loss
        return cls(encoder, head, loss.temperature, num_classes, 2.0 if loss.objective == "official" else 1.0,
                   loss_name=loss.name, l2_normalize=loss.l2_normalize, semi_hard=loss.semi_hard, margin=loss.margin)

    # -- the pieces ---------------------------------------------------------------------------
    def embed(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h (2n, num_features) and z (2n, out_dim, at least float32) of views x1, x2 (n, 3, S, S):
        rows [0, n) are view 1, rows [n, 2n) view 2."""
        h = self.encoder(torch.cat((x1, x2)))
        return h, _f32(self.head(h))

    def contrastive(self, z1: torch.Tensor, z2: torch.Tensor, gather=None, rank: int = 0):
        """The configured contrastive loss L and the contrastive accuracy (0-d each) of local projections
        z1, z2 (n, d).

        ``gather`` (e.g. ``simclr.train.distributed.gather_with_grad``) collects the projections of
        every device, so this device's anchors meet the whole global batch as negatives; ``rank``
        places this device's images in it.
        """
        z1_all, z2_all, offset = (None, None, 0) if gather is None else (gather(z1), gather(z2), rank * z1.shape[0])
        if self.loss_name == "nt_logistic":
            return nt_logistic_with_accuracy(z1, z2, self.temperature, z1_all, z2_all, offset, self.semi_hard,
                                             self.l2_normalize)
        if self.loss_name == "margin_triplet":
            return margin_triplet_with_accuracy(z1, z2, self.margin, z1_all, z2_all, offset, self.semi_hard,
                                                self.l2_normalize)
        return nt_xent_with_accuracy(z1, z2, self.temperature, z1_all, z2_all, offset, self.l2_normalize)

    @property
    def supervised(self) -> bool:
        return self.loss_name == "supervised"

    def online_loss(self, h: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the online probe on h (2n, F) detached, labels (n,) of the images.

        The probe sees h without its graph: its gradient never reaches the encoder (except under the
        supervised loss, where this classifier is what trains the encoder).
        """
        logits = self.online(_f32(h if self.supervised else h.detach()))
        y = labels.repeat(2)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    # -- the whole forward ---------------------------------------------------------------------
    def forward(self, x1: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor | None = None, gather=None,
                rank: int = 0) -> dict[str, torch.Tensor]:
        """Views x1, x2 (n, 3, S, S) of the same n images, labels (n,) or None.

        Returns a dict with ``loss`` (to minimise: ``objective_scale`` x the contrastive loss plus the online
        probe's cross-entropy), ``contrastive_loss`` (the configured loss's L: NT-Xent's is the paper's L),
        ``contrastive_acc`` and, with labels
        and a probe, ``online_loss``,
        ``online_acc`` (all 0-d; only ``loss`` carries a graph). Under the supervised loss, ``loss`` is the
        classifier's cross-entropy on both views (labels required) and the other four report it and its accuracy.
        """
        n = x1.shape[0]
        h, z = self.embed(x1, x2)
        if self.supervised:
            if labels is None:
                raise ValueError("the supervised loss needs the images' labels")
            ce, acc = self.online_loss(h, labels)
            return {"contrastive_loss": ce.detach(), "contrastive_acc": acc.detach(), "online_loss": ce.detach(),
                    "online_acc": acc.detach(), "loss": ce}
        loss, acc = self.contrastive(z[:n], z[n:], gather, rank)
        out = {"contrastive_loss": loss.detach(), "contrastive_acc": acc}
        loss = self.objective_scale * loss
        if self.online is not None and labels is not None:
            ce, online_acc = self.online_loss(h, labels)
            out.update(online_loss=ce.detach(), online_acc=online_acc.detach())
            loss = loss + ce
        out["loss"] = loss
        return out
