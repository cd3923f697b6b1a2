"""The kNN monitor: an end-of-epoch hook that scores the encoder's h with a weighted kNN classifier."""

from __future__ import annotations

import torch

from simclr.config import default_num_workers
from simclr.data import DataError
from simclr.evaluate.features import extract_features
from simclr.evaluate.knn import knn_accuracy

__all__ = ["KnnMonitor"]


class KnnMonitor:
    """kNN top-1/top-5 of h every ``monitor.knn_every`` epochs and at the last one.

    The bank is (a seeded sample of at most ``monitor.knn_max_images`` of) the training images; the
    queries are the labelled ``val`` images, or the bank itself leave-one-out when there are none.
    Streamed images are decoded by ``data.num_workers`` loader processes.
    """

    def __init__(self, cfg, train, val, device: torch.device, epochs: int):
        mon = cfg.monitor
        self.k, self.temperature, self.every, self.epochs = mon.knn_k, mon.knn_temperature, mon.knn_every, epochs
        self.image_size, self.channels_last, self.device = cfg.data.image_size, cfg.train.channels_last, device
        # Streamed images are decoded by as many loader processes as training uses (None: auto, unresolved config).
        self.num_workers = default_num_workers() if cfg.data.num_workers is None else cfg.data.num_workers
        self.bank = _sample(train, mon.knn_max_images) if train.has_labels else None
        self.val = _sample(val, mon.knn_max_images) if (val is not None and val.has_labels) else None

    def due(self, epoch: int) -> bool:
        return bool(self.bank is not None and self.every and (epoch % self.every == 0 or epoch == self.epochs))

    def __call__(self, encoder: torch.nn.Module) -> dict[str, float]:
        """{'knn_top1', 'knn_top5'}; {} (with a warning) when an image cannot be read any more."""
        try:
            feats = self._features(encoder, self.bank)
            vf = self._features(encoder, self.val) if self.val is not None else None
        except DataError as e:
            import sys

            print(f"warning: kNN monitor skipped this epoch: {e}", file=sys.stderr)
            return {}
        res = knn_accuracy(feats, self.bank.labels, vf, None if self.val is None else self.val.labels,
                           len(self.bank.classes), self.k, self.temperature)
        return {"knn_top1": res["top1"], "knn_top5": res["top5"]}

    def _features(self, encoder, ds) -> torch.Tensor:
        return extract_features(encoder, ds, self.image_size, self.device, channels_last=self.channels_last,
                                num_workers=self.num_workers)


def _sample(ds, limit: int):
    """At most ``limit`` images of ``ds``: a fixed random sample, in dataset order."""
    if len(ds) <= limit:
        return ds
    g = torch.Generator().manual_seed(0)
    return ds.subset(torch.randperm(len(ds), generator=g)[:limit].sort().values)
