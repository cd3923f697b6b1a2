"""Projection head g(.): maps h to the space where the contrastive loss is applied.

SimCLR v1 uses a 2-layer MLP, SimCLRv2 a 3-layer one; each layer is Linear -> BN -> ReLU, the
last without ReLU and without BN bias (as the official code: BN with ``center=False``). Hidden
layers are as wide as h. The head is used only for the loss; downstream tasks use h.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ProjectionHead"]


def _scale_only_bn(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    # The last layer's BN has a learnt scale but no shift: a shift before L2-normalisation would
    # only move every projection the same way.
    bn.register_parameter("bias", None)
    return bn


class ProjectionHead(nn.Module):
    """MLP head: (B, in_dim) -> (B, out_dim).

    Args:
        in_dim: size of h.
        num_layers: 0 = identity (no head; out_dim is ignored), 1 = linear, 2 = v1 MLP, 3 = v2 MLP.
        hidden_dim: width of the hidden layers; defaults to in_dim.
        out_dim: size of z (128 in the paper).
        bn: batch normalisation after each linear layer (linear layers then have no bias).
    """

    def __init__(self, in_dim: int, num_layers: int = 2, hidden_dim: int | None = None, out_dim: int = 128, bn: bool = True):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self._config = {"num_layers": num_layers, "hidden_dim": hidden_dim, "out_dim": out_dim, "bn": bn}
        hidden_dim = hidden_dim or in_dim
        self.num_layers = num_layers
        self.out_dim = in_dim if num_layers == 0 else out_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for i in range(num_layers):
            last = i == num_layers - 1
            nxt = out_dim if last else hidden_dim
            block = [nn.Linear(dim, nxt, bias=not bn)]
            if bn:
                block.append(_scale_only_bn(nxt) if last else nn.BatchNorm1d(nxt))
            if not last:
                block.append(nn.ReLU(inplace=True))
            layers.append(nn.Sequential(*block))
            dim = nxt
        self.layers = nn.ModuleList(layers)

    def config(self) -> dict:
        """The keywords (besides ``in_dim``) that rebuild this head: the ``head.*`` keys."""
        return dict(self._config)

    @classmethod
    def from_config(cls, in_dim: int, cfg) -> "ProjectionHead":
        """Build from a ``simclr.config.HeadConfig`` for an encoder with ``in_dim`` features."""
        return cls(in_dim, num_layers=cfg.num_layers, hidden_dim=cfg.hidden_dim, out_dim=cfg.out_dim, bn=cfg.bn)

    def forward(self, h: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        """Project h (B, in_dim); ``upto=k`` returns the output of the first k layers (SimCLRv2's
        fine-tuning from a middle layer of the head)."""
        for layer in self.layers[: upto if upto is not None else len(self.layers)]:
            h = layer(h)
        return h
