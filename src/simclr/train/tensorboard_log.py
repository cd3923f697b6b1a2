"""TensorBoard logging of a pretraining run (``train.tensorboard``), into RUN/tb/.

What it writes: per-step scalars every ``train.tensorboard_every`` steps (``step/loss``, ``step/contrastive_acc``,
``step/lr``), the epoch record at each epoch end (``epoch/<field>``: loss, contrastive accuracy, learning rate,
images/s, online probe and kNN accuracy; the x axis is the epoch), the first training step's view pairs as one
image (``views``: one row per image, view 1 | view 2), and at the end of training the embedding projector's input
(``h`` of a few hundred training images, with their thumbnails and classes). metrics.jsonl stays the record of the
run; this is a view of it. ``tensorboard`` is an optional extra, needed only when the key is on.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from simclr.config import ConfigError

__all__ = ["TensorBoardLog", "require_tensorboard"]


def require_tensorboard() -> None:
    """ConfigError (one line) unless the ``tensorboard`` package, which torch's SummaryWriter needs, imports."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard needs the tensorboard package: pip install 'simclr[tensorboard]'") from None


def pairs_grid(v1: torch.Tensor, v2: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Views (n, 3, S, S) in [0, 1] -> one image (3, n*(S+pad)+pad, 2*(S+pad)+pad): row i is view 1 | view 2 of image i."""
    n, c, s, _ = v1.shape
    grid = torch.ones(c, n * (s + pad) + pad, 2 * (s + pad) + pad)
    for i in range(n):
        top = pad + i * (s + pad)
        grid[:, top:top + s, pad:pad + s] = v1[i]
        grid[:, top:top + s, 2 * pad + s:2 * pad + 2 * s] = v2[i]
    return grid


class TensorBoardLog:
    """A SummaryWriter on RUN/tb with the run's logging rules (see the module docstring)."""

    def __init__(self, folder: str | Path, every: int, projector_images: int = 256, start_step: int = 0):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(folder)
        # a resumed run drops what an earlier, interrupted writer logged past the checkpoint it continues from
        self.writer = SummaryWriter(str(self.path), purge_step=start_step or None)
        self.every, self.projector_images = every, projector_images

    def due(self, step: int) -> bool:
        """Whether step ``step`` (1-based count of steps done) logs its scalars."""
        return bool(self.every) and step % self.every == 0

    def step(self, step: int, out: dict) -> None:
        """Scalars of one training step (``out``: the train step's 0-d tensors)."""
        for name in ("loss", "contrastive_acc", "lr"):
            key = "contrastive_loss" if name == "loss" else name
            if key in out:
                self.writer.add_scalar(f"step/{name}", float(out[key]), step)

    def epoch(self, rec: dict) -> None:
        """Every number of an epoch record (metrics.jsonl's line), at x = the epoch."""
        for k, v in rec.items():
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"epoch/{k}", v, rec["epoch"])
        self.writer.flush()

    def views(self, v1: torch.Tensor, v2: torch.Tensor, n: int = 16) -> None:
        """The first ``n`` view pairs (float (B, 3, S, S) in [0, 1]) as one image."""
        k = min(n, len(v1))
        grid = pairs_grid(v1[:k].detach().float().cpu().clamp(0, 1), v2[:k].detach().float().cpu().clamp(0, 1))
        self.writer.add_image("views", grid, 0, dataformats="CHW")
        self.writer.flush()

    def projector(self, encoder: torch.nn.Module, train, image_size: int, device: torch.device, epoch: int) -> None:
        """h of the first ``projector_images`` training images (centre views), with thumbnails and classes, for the
        embedding projector."""
        from simclr.data.augment import center_resize
        from simclr.evaluate.features import extract_features

        from simclr.data.errors import DataError

        n = min(self.projector_images, len(train))
        idx = torch.arange(n)
        was = encoder.training
        encoder.eval()
        try:
            h = extract_features(encoder, train, image_size, device, 64, indices=idx).float().cpu()
            thumbs = center_resize(train.get(idx), min(image_size, 32))  # float in [0, 1]
        except DataError as e:  # a streamed file that broke: the run is saved; only the projector is left out
            print(f"warning: no embedding projector in {self.path}: {str(e).splitlines()[0][:300]}", file=sys.stderr)
            return
        finally:
            encoder.train(was)
        labels = None
        if train.has_labels:
            labels = [train.classes[int(y)] for y in train.labels[:n]]
        self.writer.add_embedding(h, metadata=labels, label_img=thumbs, global_step=epoch, tag="h")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
