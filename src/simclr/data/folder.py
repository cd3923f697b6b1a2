"""Image folders: indexing files and classes, checking headers, and choosing in-memory or streamed.

A folder with class subfolders is labelled (torchvision's ImageFolder convention: labels index the
sorted subfolder names); a flat folder is unlabelled (label -1). Every file's header is checked
up front; unusable files are skipped (listed in ``ImageSet.bad``) or, with ``strict``, the first
one stops the load. Small images (at most ``in_memory_max_side``) are decoded once into memory;
larger ones are streamed by ``Batches`` at a fixed load size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from simclr.config import DataConfig, default_image_size
from simclr.data.decode import check_image, load_fixed, load_size_for
from simclr.data.errors import BadImageError, DataError, printable
from simclr.data.imageset import ImageSet

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def list_images(root: str | Path, max_per_class: int = 0) -> tuple[list[str], list[int], list[str]]:
    """Files of an image folder: (paths, labels, classes).

    With class subfolders, labels index the sorted subfolder names (torchvision's ImageFolder
    convention); a flat folder gives label -1 for every image. ``max_per_class`` keeps the first
    N files (sorted by name) of each class.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path does not exist: {printable(root)}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {printable(root)}")

    def images_in(folder: Path, recursive: bool) -> list[Path]:
        it = folder.rglob("*") if recursive else folder.iterdir()
        # Broken links, link loops and folders named like images are kept: the header check lists them as bad
        # files instead of leaving them out without a word.
        return sorted(p for p in it if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                      and (p.is_file() or p.is_symlink() or (recursive and p.is_dir())))

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    if classes:
        for i, c in enumerate(classes):
            files = images_in(root / c, recursive=True)
            if max_per_class:
                files = files[:max_per_class]
            paths += [str(f) for f in files]
            labels += [i] * len(files)
        loose = images_in(root, recursive=False)
        if loose and not paths:
            classes = []
    if not classes:
        files = images_in(root, recursive=False)
        if max_per_class:
            files = files[:max_per_class]
        paths, labels = [str(f) for f in files], [-1] * len(files)
    if not paths:
        raise DataError(f"no images found in {printable(root)} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels, classes


def load_folder(root: str | Path, cfg: DataConfig | None = None) -> ImageSet:
    """Index an image folder; decode it into memory when its images are small.

    Reads ``cfg.image_size`` (None = auto, ``simclr.config.default_image_size``), ``max_per_class``,
    ``in_memory_max_side``, ``strict`` and ``max_pixels``; ``cfg`` None means the defaults.
    Unusable files are skipped and listed in ``ImageSet.bad`` (path, reason); with ``strict`` the
    first one (in file order) raises BadImageError naming it. Skipping removes the file and its
    label together, so labels never shift.
    """
    cfg = cfg or DataConfig()
    max_pixels, strict = cfg.max_pixels, cfg.strict
    paths, labels, classes = list_images(root, cfg.max_per_class)
    threads = max(1, min(8, os.cpu_count() or 1))

    def header(p):
        try:
            return check_image(p, max_pixels), None
        except BadImageError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        heads = list(pool.map(header, paths, chunksize=64))
    bad = _collect_bad(paths, [err for _, err in heads], strict)
    ok = [i for i, (size, _) in enumerate(heads) if size is not None]
    if not ok:
        raise DataError(f"no readable images in {printable(root)} ({len(bad)} unreadable files)")
    side = max(max(heads[i][0]) for i in ok[:: max(1, len(ok) // 64)])
    size = cfg.image_size or default_image_size(side, cfg.in_memory_max_side)
    if side <= cfg.in_memory_max_side:

        def full(i):
            try:
                return load_fixed(paths[i], size, max_pixels), None
            except BadImageError as e:
                return None, str(e)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            decoded = dict(zip(ok, pool.map(full, ok, chunksize=64)))
        errs = [decoded[i][1] if i in decoded else None for i in range(len(paths))]
        bad += _collect_bad(paths, errs, strict)
        keep = [i for i in ok if decoded[i][0] is not None]
        if not keep:
            raise DataError(f"no readable images in {printable(root)} ({len(bad)} unreadable files)")
        return ImageSet(labels=torch.tensor([labels[i] for i in keep], dtype=torch.long), classes=classes,
                        images=torch.stack([decoded[i][0] for i in keep]), paths=[paths[i] for i in keep],
                        bad=sorted(bad), max_pixels=max_pixels)
    return ImageSet(labels=torch.tensor([labels[i] for i in ok], dtype=torch.long), classes=classes,
                    paths=[paths[i] for i in ok], load_size=load_size_for(size), bad=sorted(bad), max_pixels=max_pixels)


def _collect_bad(paths: list[str], errors: list[str | None], strict: bool) -> list[tuple[str, str]]:
    bad = [(p, e) for p, e in zip(paths, errors) if e is not None]
    if strict and bad:
        raise BadImageError(f"unreadable image {printable(bad[0][0])}: {bad[0][1]} (without --strict such files are skipped)")
    return bad
