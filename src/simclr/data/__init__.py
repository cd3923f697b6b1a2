"""Datasets: image folders, WebDataset tar shards, the official CIFAR and STL-10 archives, and a built-in synthetic set.

Loading only decodes: images come out as uint8 tensors (B, 3, H, W) and every random transform
happens on the training device. Small images (CIFAR, STL-10 sized) are decoded once into memory
(STL-10's raw image files are memory-mapped instead: see ``stl10``) and batches are sliced from one
tensor; large images are streamed through DataLoader workers: for training each worker cuts both
views from the image's whole frame (``crop.ViewCropper``); for evaluation each image is resized
(shorter side) and centre-cropped to a fixed load size slightly larger than the evaluation size.

A dataset spec is a folder path, WebDataset tar shards (a ``.tar`` file, a brace pattern such as
``shards/train-{000000..000031}.tar``, several joined by ``::``, or a folder holding only ``.tar``
files: ``shards``; needs ``pip install 'simclr[shards]'``), or ``cifar10``, ``cifar100``, ``stl10``,
``synthetic``, optionally with a split suffix such as ``cifar10:test`` (the default split is
``train``; STL-10 also has ``stl10:unlabeled`` and ``stl10:train+unlabeled``, the usual pretraining
set, labelled -1 where unknown). Settings come from the ``data`` section of the config
(``simclr.config.DataConfig``).

Modules: ``errors`` (DataError, BadImageError, printable file names), ``decode`` (one file to RGB),
``imageset`` (the ImageSet type), ``folder`` (image folders), ``shards`` (WebDataset tar shards: spec,
index, epoch order), ``cifar`` (CIFAR archives and their cache), ``stl10`` (the STL-10 archive, on
cifar's cache), ``synthetic`` (the shapes set), ``batches`` (training batches, streaming workers).
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
from simclr.data.shards import is_shard_spec, load_shards
from simclr.data.stl10 import STL10_SPLITS, load_stl10
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
    "load_shards",
    "load_cifar",
    "load_stl10",
    "download",
    "synthetic_images",
    "parse_spec",
    "load_dataset",
]

BUILT_IN = ("cifar10", "cifar100", "stl10", "synthetic")
_SPLITS = {"stl10": tuple(STL10_SPLITS)}  # the others: train and test
_RESIZE_CHUNK = 1024  # images centre-resized at a time by load_dataset


def parse_spec(spec: str) -> tuple[str, str]:
    """'cifar10:test' -> ('cifar10', 'test'); folders pass through with split ''."""
    name, _, split = spec.partition(":")
    if name.lower() in BUILT_IN:
        split = split or "train"
        valid = _SPLITS.get(name.lower(), ("train", "test"))
        if split not in valid:
            use = ", ".join(f":{s}" for s in valid[:-1]) + f" or :{valid[-1]}"
            raise DataError(f"unknown split {split!r} in {spec!r}; use {use}")
        return name.lower(), split
    return spec, ""


def load_dataset(spec: str, cfg: DataConfig | None = None) -> ImageSet:
    """Load a dataset by spec (see the module docstring) with the settings of ``cfg`` (None: defaults).

    ``cfg.image_size`` None is auto (``simclr.config.default_image_size``): built-in sets, always
    held in memory (or memory-mapped), keep their native side; folders and shards follow the in-memory /
    streamed decision.
    """
    cfg = cfg or DataConfig()
    if not spec:
        raise DataError("no data given: pass --data PATH (an image folder, .tar shards, cifar10, cifar100, stl10 or synthetic)")
    name, split = parse_spec(spec)
    if name in CIFAR_SOURCES:
        ds = load_cifar(name, split, cfg.data_dir)
    elif name == "stl10":
        ds = load_stl10(split, cfg.data_dir)
    elif name == "synthetic":
        # Different seeds for the two splits: test images are never training images.
        ds = synthetic_images(cfg.synthetic_train if split == "train" else cfg.synthetic_test, seed=1 if split == "train" else 2)
    elif is_shard_spec(name):
        return load_shards(name, cfg)
    else:
        return load_folder(name, cfg)
    if cfg.max_per_class:
        # Unlabelled images (-1, STL-10's) count as one more class, as in a flat folder.
        keep = torch.cat([torch.nonzero(ds.labels == c).squeeze(1)[: cfg.max_per_class] for c in range(-1, len(ds.classes))]).sort().values
        ds = ds.subset(keep)
    size = cfg.image_size or default_image_size(ds.side, in_memory_max_side=ds.side)  # built-in sets are in memory
    if size != ds.side:
        from simclr.data.augment import center_resize

        # Resized copy held in memory (a memory-mapped set too), made in chunks so that the float
        # intermediate stays small (100,000 STL-10 images as float32 would be 11 GB).
        out = torch.empty((len(ds), 3, size, size), dtype=torch.uint8)
        for i in range(0, len(ds), _RESIZE_CHUNK):
            out[i : i + _RESIZE_CHUNK] = (center_resize(ds.images[i : i + _RESIZE_CHUNK], size) * 255).round().to(torch.uint8)
        ds.images = out
    return ds
