"""STL-10 from the official binary archive, memory-mapped so that 100,000 unlabelled images cost no RAM.

The archive (Coates et al., ``stl10_binary.tar.gz``) holds one folder ``stl10_binary/`` with:

- ``train_X.bin`` (5,000 images), ``test_X.bin`` (8,000), ``unlabeled_X.bin`` (100,000): raw uint8,
  no header, image after image, 3 * 96 * 96 = 27,648 bytes each: the red, green and blue planes
  one after the other, each plane stored column-major (the byte at offset ``c * 96 + r`` of a plane
  is the pixel of row r, column c). Read as (N, 3, 96, 96) the last two axes are therefore
  (column, row) and are swapped back by a transposed view.
- ``train_y.bin``, ``test_y.bin``: one uint8 label per image, 1..10 (0-based here: minus 1).
- ``class_names.txt``: the 10 class names, one a line, in label order.
- ``fold_indices.txt``: the 10 official training folds (not used here).

Download, extraction and the untrusted cache are those of ``simclr.data.cifar`` (MD5-verified
archive, atomic extraction with a manifest of each file's MD5, every file checked against it on each
load and re-extracted when changed; a folder extracted by another tool is checked against the
official MD5s of the binaries). The files are raw bytes, so nothing in them can run code; their
sizes are still checked, so that a truncated or foreign file is a one-line DataError rather than
misaligned images.

Image files are memory-mapped (copy-on-write: the file is opened read-only and an in-place write to
the tensor changes only this process's copy) and exposed as a strided torch view: a batch
``images.index_select(0, idx)`` reads just its images, contiguous (B, 3, 96, 96), and processes
(e.g. distributed ranks) share the page cache. ``train+unlabeled`` is the exception: two files cannot
be one tensor without a copy, so it is read into memory (105,000 images, 2.9 GB).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from simclr.data.cifar import (
    MANIFEST,
    _clean_stale_temps,
    _extract,
    _md5,
    _problem,
    default_data_dir,
    download,
)
from simclr.data.errors import DataError, describe, printable
from simclr.data.imageset import ImageSet

__all__ = ["STL10_SOURCE", "STL10_SPLITS", "load_stl10"]

STL10_SOURCE = {
    "url": "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    "md5": "91f7769df0f17e558f3565bffb0c7dfb",
    "folder": "stl10_binary",
    # MD5 of the extracted binaries of the official archive (the values torchvision checks)
    "checksums": {
        "train_X.bin": "918c2871b30a85fa023e0c44e0bee87f",
        "train_y.bin": "5a34089d4802c674881badbb80307741",
        "unlabeled_X.bin": "5242ba1fed5e4be9e1e742405eb56ca4",
        "test_X.bin": "7f263ba9f9e0b06b93213547f721ac82",
        "test_y.bin": "36f9794fa4beb8a2c72628de14fa638e",
    },
}
# split -> the parts it concatenates; part -> (image file, label file or None)
STL10_SPLITS = {"train": ("train",), "test": ("test",), "unlabeled": ("unlabeled",), "train+unlabeled": ("train", "unlabeled")}
_PARTS = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"), "unlabeled": ("unlabeled_X.bin", None)}
CLASS_NAMES = "class_names.txt"
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE


def _stl_problem(folder: Path, names: list[str]) -> str | None:
    """Why the files ``names`` of ``folder`` cannot be trusted, or None. With our manifest: cifar's check.
    Without (extracted by another tool): the official MD5s of the binaries; class_names.txt, which has
    none, is only checked when read."""
    if not folder.is_dir() or (folder / MANIFEST).is_file():
        return _problem(folder, names)
    for name in names:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        want = STL10_SOURCE["checksums"].get(name)
        if want is not None and _md5(path) != want:
            return f"{name} does not match its checksum"
    return None


def _bad(path: Path, what: str) -> DataError:
    return DataError(f"{printable(path)} {what}; delete the cache folder {printable(path.parent)} and run again")


def _read_classes(path: Path) -> list[str]:
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise _bad(path, f"cannot be read ({describe(e)})") from None
    if not names:
        raise _bad(path, "holds no class names")
    return names


def _read_labels(path: Path, num_classes: int) -> torch.Tensor:
    """int64 (N,) 0-based labels from a file of uint8 labels 1..num_classes."""
    y = np.fromfile(path, dtype=np.uint8)
    if y.size == 0 or y.min() < 1 or y.max() > num_classes:
        raise _bad(path, f"does not hold STL-10 labels (one byte per image, 1 to {num_classes})")
    return torch.from_numpy(y.astype(np.int64) - 1)


def _map_images(path: Path, n: int | None) -> torch.Tensor:
    """uint8 (N, 3, 96, 96) view of a memory-mapped image file (strided: each plane is column-major
    on disk). ``n`` is the number of images the labels say the file holds (None: unlabelled)."""
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES or (n is not None and size != n * IMAGE_BYTES):
        want = f"{n} images of 3x96x96 ({n * IMAGE_BYTES} bytes)" if n is not None else f"a whole number of 3x96x96 images ({IMAGE_BYTES} bytes each)"
        raise _bad(path, f"holds {size} bytes, not {want}: it is truncated or not an STL-10 file")
    # mode "c": opened read-only, mapped copy-on-write, so the tensor is writable (torch warns about
    # read-only arrays) and a write can neither crash on a read-only page nor change the file.
    mm = np.memmap(path, dtype=np.uint8, mode="c", shape=(size // IMAGE_BYTES, 3, SIDE, SIDE))
    return torch.from_numpy(mm).transpose(2, 3)


def load_stl10(split: str = "train", root: str | Path = "", url: str | None = None, md5: str | None = None) -> ImageSet:
    """STL-10 ``split`` (train, test, unlabeled or train+unlabeled) from the official archive, downloaded to
    ``root`` when absent; images uint8 (N, 3, 96, 96), labels int64 (N,) 0-based, -1 for unlabelled images.

    ``root`` "" is ``default_data_dir()`` ($SIMCLR_DATA_DIR or ~/.cache/simclr); ``url`` and ``md5``
    override the official archive's (mirrors, tests). Single-file splits are memory-mapped views (see the
    module docstring); train+unlabeled is read into memory.
    """
    if split not in STL10_SPLITS:
        raise DataError(f"unknown STL-10 split {split!r}; use {', '.join(STL10_SPLITS)}")
    src = STL10_SOURCE
    root = Path(root) if root else default_data_dir()
    folder = root / src["folder"]
    parts = STL10_SPLITS[split]
    needed = [CLASS_NAMES] + [f for p in parts for f in _PARTS[p] if f]
    if root.is_dir():
        _clean_stale_temps(root, src["folder"])
    problem = _stl_problem(folder, needed)
    if problem is not None:
        archive = root / Path(src["url"]).name
        want = md5 or src["md5"]
        root.mkdir(parents=True, exist_ok=True)
        if not archive.is_file() or _md5(archive) != want:
            download(url or src["url"], archive, want)
        _extract(archive, root, src["folder"])
        problem = _stl_problem(folder, needed)
        if problem is not None:
            raise DataError(f"the STL-10 cache {printable(folder)} cannot be repaired from {printable(archive)} ({problem}); "
                            "delete the cache folder and run again")
    classes = _read_classes(folder / CLASS_NAMES)
    images, labels = [], []
    for p in parts:
        x_file, y_file = _PARTS[p]
        y = _read_labels(folder / y_file, len(classes)) if y_file else None
        x = _map_images(folder / x_file, None if y is None else len(y))
        images.append(x)
        labels.append(y if y is not None else torch.full((x.shape[0],), -1, dtype=torch.long))
    if len(images) == 1:
        return ImageSet(labels=labels[0], classes=classes, images=images[0])
    return ImageSet(labels=torch.cat(labels), classes=classes, images=torch.cat(images))  # contiguous (N, 3, 96, 96)
