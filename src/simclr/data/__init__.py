"""Datasets: image folders, the official CIFAR archives, and a built-in synthetic set.

Loading only decodes: images come out as uint8 tensors (B, 3, H, W) and every random transform
happens on the training device. Small images (CIFAR, STL-10 sized) are decoded once into memory
and batches are sliced from one tensor; large images are streamed through DataLoader workers,
each resized (shorter side) and centre-cropped to a fixed load size slightly larger than the
training size so that batches stack and the random resized crop on the device still sees
(almost) the whole image.

A dataset spec is a folder path, or ``cifar10``, ``cifar100``, ``synthetic``, optionally with a
split suffix such as ``cifar10:test`` (the default split is ``train``). Settings come from the
``data`` section of the config (``simclr.config.DataConfig``).

Modules: ``errors`` (DataError, BadImageError, printable file names), ``decode`` (one file to RGB),
``imageset`` (the ImageSet type), ``folder`` (image folders), ``cifar`` (CIFAR archives and their
cache), ``synthetic`` (the shapes set), ``batches`` (training batches, streaming workers).
"""

from __future__ import annotations

import torch

from simclr.config import DataConfig, default_image_size
from simclr.data.batches import Batches
from simclr.data.cifar import CIFAR_SOURCES, download, load_cifar
from simclr.data.decode import check_image, decode_image
from simclr.data.errors import BadImageError, DataError
from simclr.data.folder import IMAGE_EXTENSIONS, list_images, load_folder
from simclr.data.imageset import ImageSet
from simclr.data.synthetic import SYNTHETIC_CLASSES, synthetic_images

__all__ = [
    "IMAGE_EXTENSIONS",
    "CIFAR_SOURCES",
    "SYNTHETIC_CLASSES",
    "DataError",
    "BadImageError",
    "ImageSet",
    "Batches",
    "list_images",
    "check_image",
    "decode_image",
    "load_folder",
    "load_cifar",
    "download",
    "synthetic_images",
    "parse_spec",
    "load_dataset",
]

BUILT_IN = ("cifar10", "cifar100", "synthetic")


def parse_spec(spec: str) -> tuple[str, str]:
    """'cifar10:test' -> ('cifar10', 'test'); folders pass through with split ''."""
    name, _, split = spec.partition(":")
    if name.lower() in BUILT_IN:
        split = split or "train"
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} in {spec!r}; use :train or :test")
        return name.lower(), split
    return spec, ""


def load_dataset(spec: str, cfg: DataConfig | None = None) -> ImageSet:
    """Load a dataset by spec (see the module docstring) with the settings of ``cfg`` (None: defaults).

    ``cfg.image_size`` None is auto (``simclr.config.default_image_size``): built-in sets, always
    held in memory, keep their native side; folders follow the in-memory / streamed decision.
    """
    cfg = cfg or DataConfig()
    if not spec:
        raise DataError("no data given: pass --data PATH (an image folder, cifar10, cifar100 or synthetic)")
    name, split = parse_spec(spec)
    if name in CIFAR_SOURCES:
        ds = load_cifar(name, split, cfg.data_dir)
    elif name == "synthetic":
        # Different seeds for the two splits: test images are never training images.
        ds = synthetic_images(cfg.synthetic_train if split == "train" else cfg.synthetic_test, seed=1 if split == "train" else 2)
    else:
        return load_folder(name, cfg)
    if cfg.max_per_class:
        keep = torch.cat([torch.nonzero(ds.labels == c).squeeze(1)[: cfg.max_per_class] for c in range(len(ds.classes))]).sort().values
        ds = ds.subset(keep)
    size = cfg.image_size or default_image_size(ds.side, in_memory_max_side=ds.side)  # built-in sets are in memory
    if size != ds.side:
        from simclr.data.augment import center_resize

        ds.images = (center_resize(ds.images, size) * 255).round().to(torch.uint8)
    return ds
