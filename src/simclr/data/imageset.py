"""``ImageSet``: the one dataset type every loader returns and every consumer reads.

It either holds all images decoded in memory (small images) or lists files decoded on demand at a
fixed load size (large images). ``bad`` lists (path, reason) of files that were skipped: found at
indexing time by the folder scan, and, for streamed sets, found while training by ``Batches``,
which appends each newly found file once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from simclr.config import DataConfig
from simclr.data.decode import load_fixed
from simclr.data.errors import BadImageError, printable

__all__ = ["ImageSet"]


@dataclass
class ImageSet:
    """A labelled (or unlabelled) image set.

    Either ``images`` holds every image decoded (uint8 (N, 3, H, W)), or ``paths`` lists files
    that are decoded on the fly at ``load_size``. ``labels`` is int64 (N,), -1 when unknown.
    """

    labels: torch.Tensor
    classes: list[str]
    images: torch.Tensor | None = None
    paths: list[str] | None = None
    load_size: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of skipped files
    max_pixels: int = DataConfig.max_pixels  # pixel limit for files decoded on the fly

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_labels(self) -> bool:
        return bool(len(self) and (self.labels >= 0).all())

    @property
    def streamed(self) -> bool:
        """True when images are decoded from ``paths`` on demand (large images)."""
        return self.images is None

    @property
    def side(self) -> int:
        """Side of the images as loaded (before augmentation)."""
        return int(self.images.shape[-1]) if self.images is not None else self.load_size

    def names(self, prefix: str = "") -> list[str]:
        """A name per image: its file path, or ``prefix#i`` for built-in sets."""
        return list(self.paths) if self.paths is not None else [f"{prefix}#{i}" for i in range(len(self))]

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 (len(idx), 3, side, side) for the given indices.

        A streamed file that cannot be decoded raises BadImageError naming it.
        """
        if self.images is not None:
            return self.images.index_select(0, idx)
        out = []
        for i in idx.tolist():
            path = self.paths[i]
            try:
                out.append(load_fixed(path, self.load_size, self.max_pixels))
            except BadImageError as e:
                raise BadImageError(f"unreadable image {printable(path)}: {e}") from None
        return torch.stack(out)

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(
            labels=self.labels[idx],
            classes=self.classes,
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
            load_size=self.load_size,
            max_pixels=self.max_pixels,
        )
