"""``ImageSet``: the one dataset type every loader returns and every consumer reads.

It either holds all images decoded in memory (small images) or lists files decoded on demand at a
fixed load size (large images); a set read from WebDataset tar shards (``simclr.data.shards``) keeps
its ``ShardIndex`` in ``shards`` instead of ``paths``: its images are read by byte offset. ``bad`` lists
(path, reason) of files that were skipped (``SHARD#KEY`` for shard samples): found at indexing time by
the folder or shard scan, and, for streamed sets, found while training by ``Batches``, which appends
each newly found file once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import torch

from simclr.config import DataConfig
from simclr.data.decode import load_fixed
from simclr.data.errors import BadImageError, printable

__all__ = ["ImageSet"]


@dataclass
class ImageSet:
    """A labelled (or unlabelled) image set.

    Either ``images`` holds every image decoded (uint8 (N, 3, H, W)), or ``paths`` lists files
    that are decoded on the fly at ``load_size``, or ``shards`` (a ``simclr.data.shards.ShardIndex``)
    locates each image in tar shards, decoded on the fly likewise (an in-memory shard set keeps it
    too, for the names). ``labels`` is int64 (N,), -1 when unknown.
    """

    labels: torch.Tensor
    classes: list[str]
    images: torch.Tensor | None = None
    paths: list[str] | None = None
    load_size: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of skipped files
    max_pixels: int = DataConfig.max_pixels  # pixel limit for files decoded on the fly
    shards: Any = None  # a simclr.data.shards.ShardIndex (not imported here: shards builds ImageSets)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_labels(self) -> bool:
        return bool(len(self) and (self.labels >= 0).all())

    @property
    def streamed(self) -> bool:
        """True when images are decoded from ``paths`` or ``shards`` on demand (large images)."""
        return self.images is None

    @property
    def side(self) -> int:
        """Side of the images as loaded (before augmentation)."""
        return int(self.images.shape[-1]) if self.images is not None else self.load_size

    def names(self, prefix: str = "") -> list[str]:
        """A name per image: its file path, ``SHARD#KEY`` for shard sets, or ``prefix#i`` for built-in sets."""
        if self.paths is not None:
            return list(self.paths)
        if self.shards is not None:
            return self.shards.names()
        return [f"{prefix}#{i}" for i in range(len(self))]

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 (len(idx), 3, side, side) for the given indices.

        A streamed file that cannot be decoded raises BadImageError naming it.
        """
        if self.images is not None:
            return self.images.index_select(0, idx)
        out = []
        for i in idx.tolist():
            try:
                out.append(load_fixed(self.source(i), self.load_size, self.max_pixels))
            except BadImageError as e:
                raise BadImageError(f"unreadable image {printable(self.name(i))}: {e}") from None
        return torch.stack(out)

    def name(self, i: int) -> str:
        """The name of image i (see ``names``)."""
        if self.paths is not None:
            return self.paths[i]
        return self.shards.name(i) if self.shards is not None else f"#{i}"

    def source(self, i: int):
        """What to decode for streamed image i: its file path, or its bytes (a BytesIO) read from its shard.
        BadImageError (the reason only) when a shard sample cannot be read."""
        if self.shards is not None:
            return io.BytesIO(self.shards.read(i))
        if self.paths is None:
            raise TypeError("an in-memory set without files has no sources")
        return self.paths[i]

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(
            labels=self.labels[idx],
            classes=self.classes,
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
            load_size=self.load_size,
            max_pixels=self.max_pixels,
            shards=None if self.shards is None else self.shards.subset(idx),
        )
