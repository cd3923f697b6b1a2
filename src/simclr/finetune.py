"""Semi-supervised fine-tuning (paper section 6.2; SimCLRv2 section 2).

A class-balanced fraction of the labels (deterministic for a seed; the chosen files are saved) trains
the whole network, initialised from the pretrained encoder (or randomly, the supervised baseline):
SGD with Nesterov momentum 0.9, lr 0.05 x B/256, no weight decay, cosine schedule, random crop + flip
only. The classifier sits on h or, as in SimCLRv2, on the output of the first k projection-head
layers (``from_head_layer=k``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from simclr.eval import extract_features, topk_accuracy
from simclr.probe import train_classifier

__all__ = ["balanced_subset", "Classifier", "finetune"]


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of ``fraction`` of every class (rounded, at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        n = max(1, int(round(fraction * len(idx))))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values


class Classifier(nn.Module):
    """Encoder (+ the first k layers of the projection head) + a linear layer: (B, 3, S, S) -> logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: nn.Module | None = None, head_layers: int = 0):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.head_layers = head_layers
        dim = encoder.num_features
        if head is not None and head_layers:
            last = head.layers[head_layers - 1][0]
            dim = last.out_features
        self.fc = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        if self.head is not None and self.head_layers:
            h = self.head(h, upto=self.head_layers)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def finetune(
    model: Classifier,
    train,
    test,
    image_size: int,
    device: torch.device,
    label_fraction: float,
    epochs: int = 30,
    batch_size: int = 256,
    base_lr: float = 0.05,
    seed: int = 0,
    out: str | Path | None = None,
    log=print,
) -> dict:
    """Fine-tune ``model`` on a balanced ``label_fraction`` of ``train``; top-1/top-5 on ``test``."""
    subset = balanced_subset(train.labels, label_fraction, seed)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        names = train.names("train")
        (out / "finetune_labels.txt").write_text("".join(f"{names[i]}\t{int(train.labels[i])}\n" for i in subset.tolist()))
    data = train.subset(subset)
    n = len(data)
    bs = min(batch_size, n)
    model = model.to(device).to(memory_format=torch.channels_last)
    lr = base_lr * bs / 256
    model.train()
    train_classifier(model, list(model.parameters()), data, image_size, device, epochs, bs, lr, seed, log, "finetune")
    model.eval()
    logits = extract_features(model, test.get, len(test), image_size, device)
    res = topk_accuracy(logits, test.labels)
    res.update(label_fraction=label_fraction, num_labelled=n, epochs=epochs, batch_size=bs, lr=lr)
    return res
