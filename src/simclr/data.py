"""Datasets: image folders, the official CIFAR archives, and a built-in synthetic set.

Loading only decodes: images come out as uint8 tensors (B, 3, H, W) and every random transform
happens on the training device (``simclr.augment``). Small images (CIFAR, STL-10 sized) are
decoded once into memory and batches are sliced from one tensor; large images are streamed
through DataLoader workers, each resized (shorter side) and centre-cropped to a fixed load size
slightly larger than the training size so that batches stack and the random resized crop on the
device still sees (almost) the whole image.

A dataset spec is a folder path, or ``cifar10``, ``cifar100``, ``synthetic``, optionally with a
split suffix such as ``cifar10:test`` (the default split is ``train``).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageSet",
    "list_images",
    "decode_image",
    "load_dataset",
    "load_cifar",
    "download",
    "synthetic_images",
    "Batches",
    "CIFAR_SOURCES",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

CIFAR_SOURCES = {
    "cifar10": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        label_key="labels",
        meta=("batches.meta", "label_names"),
    ),
    "cifar100": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        label_key="fine_labels",
        meta=("meta", "fine_label_names"),
    ),
}


class DataError(ValueError):
    """A data problem the user can fix (missing folder, no images, bad archive)."""


class BadImageError(DataError):
    """One file that cannot be used as an image (empty, truncated, not an image, too many pixels)."""


# Pillow's own warning threshold; larger images are refused as likely decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485


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

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_labels(self) -> bool:
        return bool(len(self) and (self.labels >= 0).all())

    @property
    def side(self) -> int:
        """Side of the images as loaded (before augmentation)."""
        return int(self.images.shape[-1]) if self.images is not None else self.load_size

    def names(self, prefix: str = "") -> list[str]:
        """A name per image: its file path, or ``prefix#i`` for built-in sets."""
        return list(self.paths) if self.paths is not None else [f"{prefix}#{i}" for i in range(len(self))]

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 (len(idx), 3, side, side) for the given indices."""
        if self.images is not None:
            return self.images.index_select(0, idx)
        return torch.stack([_load_fixed(self.paths[i], self.load_size) for i in idx.tolist()])

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(
            labels=self.labels[idx],
            classes=self.classes,
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
            load_size=self.load_size,
        )


# ---------------------------------------------------------------------------------------------
# folders


def list_images(root: str | Path, max_per_class: int = 0) -> tuple[list[str], list[int], list[str]]:
    """Files of an image folder: (paths, labels, classes).

    With class subfolders, labels index the sorted subfolder names (torchvision's ImageFolder
    convention); a flat folder gives label -1 for every image. ``max_per_class`` keeps the first
    N files (sorted by name) of each class.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path does not exist: {root}")
    if not root.is_dir():
        raise DataError(f"data path is not a folder: {root}")

    def images_in(folder: Path, recursive: bool) -> list[Path]:
        it = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))

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
        raise DataError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths, labels, classes


def _open(path: str | Path, max_pixels: int) -> Image.Image:
    try:
        if os.path.getsize(path) == 0:
            raise BadImageError("empty file")
        im = Image.open(path)
    except BadImageError:
        raise
    except Image.DecompressionBombError as e:
        raise BadImageError(f"refused: {str(e).split('.')[0]}") from None
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError from broken headers
        raise BadImageError(f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise BadImageError(f"refused: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression bomb?)")
    if w < 1 or h < 1:
        im.close()
        raise BadImageError(f"image has no pixels ({w}x{h})")
    return im


def check_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Read only the header: (width, height), or BadImageError."""
    with _open(path, max_pixels) as im:
        return im.size


def decode_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an image as RGB, applying its EXIF orientation; grayscale, 16-bit, CMYK, RGBA and palette
    images become RGB. Raises BadImageError for anything unusable."""
    try:
        with _open(path, max_pixels) as im:
            im.load()
            return _to_rgb(im)
    except BadImageError:
        raise
    except Exception as e:  # truncated data, broken streams
        raise BadImageError(f"cannot decode ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # 16-bit and 32-bit grayscale: scale to 8 bits instead of clipping at 255
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
        # transparent pixels over white, as a viewer shows them
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _fit(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop a square."""
    w, h = im.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def _load_fixed(path: str, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    return _to_tensor(_fit(decode_image(path, max_pixels), size))


def load_size_for(image_size: int) -> int:
    """Load resolution for streamed images: 8/7 of the training size (256 for 224)."""
    return int(math.ceil(image_size * 8 / 7))


def load_folder(root: str | Path, image_size: int = 0, max_per_class: int = 0, in_memory_max_side: int = 96,
                strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSet:
    """Index an image folder; decode it into memory when its images are small.

    ``image_size`` 0 keeps the native side of small images (and means 224 for large ones).
    Unusable files are skipped and listed in ``ImageSet.bad`` (path, reason); with ``strict`` the
    first one (in file order) raises BadImageError naming it. Skipping removes the file and its
    label together, so labels never shift.
    """
    paths, labels, classes = list_images(root, max_per_class)
    workers = max(1, min(8, os.cpu_count() or 1))

    def header(p):
        try:
            return check_image(p, max_pixels), None
        except BadImageError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        heads = list(pool.map(header, paths, chunksize=64))
    bad = _collect_bad(paths, [err for _, err in heads], strict)
    ok = [i for i, (size, _) in enumerate(heads) if size is not None]
    if not ok:
        raise DataError(f"no readable images in {root} ({len(bad)} unreadable files)")
    side = max(max(heads[i][0]) for i in ok[:: max(1, len(ok) // 64)])
    if side <= in_memory_max_side:
        size = image_size or side

        def full(i):
            try:
                return _load_fixed(paths[i], size, max_pixels), None
            except BadImageError as e:
                return None, str(e)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            decoded = dict(zip(ok, pool.map(full, ok, chunksize=64)))
        errs = [decoded[i][1] if i in decoded else None for i in range(len(paths))]
        bad += _collect_bad(paths, errs, strict)
        keep = [i for i in ok if decoded[i][0] is not None]
        if not keep:
            raise DataError(f"no readable images in {root} ({len(bad)} unreadable files)")
        return ImageSet(labels=torch.tensor([labels[i] for i in keep], dtype=torch.long), classes=classes,
                        images=torch.stack([decoded[i][0] for i in keep]), paths=[paths[i] for i in keep],
                        bad=sorted(bad))
    size = image_size or 224
    return ImageSet(labels=torch.tensor([labels[i] for i in ok], dtype=torch.long), classes=classes,
                    paths=[paths[i] for i in ok], load_size=load_size_for(size), bad=sorted(bad))


def _collect_bad(paths: list[str], errors: list[str | None], strict: bool) -> list[tuple[str, str]]:
    bad = [(p, e) for p, e in zip(paths, errors) if e is not None]
    if strict and bad:
        raise BadImageError(f"unreadable image {bad[0][0]}: {bad[0][1]} (without --strict such files are skipped)")
    return bad


# ---------------------------------------------------------------------------------------------
# CIFAR archives


def default_data_dir() -> Path:
    return Path(os.environ.get("SIMCLR_DATA_DIR", Path.home() / ".cache" / "simclr"))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (atomically) and verify its MD5; retry on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(retries):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            got = _md5(Path(tmp))
            if got != md5:
                raise DataError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
            os.replace(tmp, dest)
            return dest
        except (OSError, DataError) as e:
            last = e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(f"could not download {url} after {retries} tries: {last}")


def _safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``target`` and links."""
    target = target.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            dest = (target / member.name).resolve()
            if member.issym() or member.islnk() or not (dest == target or target in dest.parents):
                raise DataError(f"refusing unsafe archive member {member.name!r} in {archive}")
            if not (member.isfile() or member.isdir()):
                raise DataError(f"refusing special archive member {member.name!r} in {archive}")
        tar.extractall(target, filter="data")


def load_cifar(name: str, split: str = "train", root: str | Path = "", url: str | None = None, md5: str | None = None) -> ImageSet:
    """CIFAR-10/100 from the official python-format archive, downloaded to ``root`` when absent."""
    src = CIFAR_SOURCES[name]
    root = Path(root) if root else default_data_dir()
    folder = root / src["folder"]
    if not folder.is_dir():
        archive = root / Path(src["url"]).name
        want = md5 or src["md5"]
        if not archive.is_file() or _md5(archive) != want:
            download(url or src["url"], archive, want)
        _safe_extract(archive, root)
    images, labels = [], []
    for batch in src[split]:
        with open(folder / batch, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # noqa: S301 - the archive's checksum was verified
        images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += list(d[src["label_key"]])
    meta_file, meta_key = src["meta"]
    with open(folder / meta_file, "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")[meta_key])  # noqa: S301
    return ImageSet(labels=torch.tensor(labels, dtype=torch.long), classes=classes, images=torch.from_numpy(np.concatenate(images)))


# ---------------------------------------------------------------------------------------------
# synthetic shapes

SYNTHETIC_CLASSES = ["disc", "square", "triangle", "plus", "ring", "diamond", "hbars", "vbars", "checker", "two-discs"]


def synthetic_images(n: int, seed: int, size: int = 32) -> ImageSet:
    """A procedurally generated labelled set: 10 shape classes (the label) in random colours.

    Each image is one large shape near the centre, with random foreground and background colours
    (independent of the label), size, aspect, rotation, offset and pixel noise. A random network
    sees mostly colour and scores near chance with kNN; contrastive training, which learns to
    ignore colour changes and crops, recovers the shapes. Deterministic for a seed; images are
    uint8 (n, 3, size, size).
    """
    rng = np.random.default_rng(seed)
    ss = 2  # supersampling for anti-aliased edges
    s = size * ss
    yy, xx = np.meshgrid(np.linspace(-1, 1, s), np.linspace(-1, 1, s), indexing="ij")
    labels = rng.integers(0, len(SYNTHETIC_CLASSES), n)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        c = labels[i]
        r = rng.uniform(0.55, 0.8)
        stretch = rng.uniform(0.85, 1.15)
        cx, cy = rng.uniform(-0.15, 0.15, 2)
        ang = rng.uniform(-0.3, 0.3)
        x = ((xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)) / (r * stretch)
        y = (-(xx - cx) * math.sin(ang) + (yy - cy) * math.cos(ang)) * stretch / r
        rad = np.sqrt(x**2 + y**2)
        if c == 0:
            m = rad < 1
        elif c == 1:
            m = (np.abs(x) < 0.85) & (np.abs(y) < 0.85)
        elif c == 2:
            m = (y < 0.8) & (y > 1.9 * np.abs(x) - 0.9)
        elif c == 3:
            m = ((np.abs(x) < 0.3) & (np.abs(y) < 1)) | ((np.abs(y) < 0.3) & (np.abs(x) < 1))
        elif c == 4:
            m = (rad < 1) & (rad > 0.55)
        elif c == 5:
            m = np.abs(x) + np.abs(y) < 1.1
        elif c == 6:
            m = (np.abs(x) < 1) & (np.abs(y) < 1) & (np.floor((y + 1) * 2.5) % 2 == 0)
        elif c == 7:
            m = (np.abs(x) < 1) & (np.abs(y) < 1) & (np.floor((x + 1) * 2.5) % 2 == 0)
        elif c == 8:
            m = (np.abs(x) < 1) & (np.abs(y) < 1) & ((np.floor((x + 1) * 2) + np.floor((y + 1) * 2)) % 2 == 0)
        else:
            m = (np.sqrt((x - 0.5) ** 2 + y**2) < 0.42) | (np.sqrt((x + 0.5) ** 2 + y**2) < 0.42)
        fg = rng.uniform(0, 1, 3)
        bg = rng.uniform(0, 1, 3)
        while np.abs(fg - bg).sum() < 0.6:  # keep the shape visible
            bg = rng.uniform(0, 1, 3)
        noise = rng.normal(0, 0.05, (s, s, 1))
        img = np.where(m[..., None], fg, bg) + noise
        img = img.reshape(size, ss, size, ss, 3).mean((1, 3))
        out[i] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1)
    return ImageSet(labels=torch.from_numpy(labels.astype(np.int64)), classes=list(SYNTHETIC_CLASSES), images=torch.from_numpy(out))


# ---------------------------------------------------------------------------------------------
# entry point


def parse_spec(spec: str) -> tuple[str, str]:
    """'cifar10:test' -> ('cifar10', 'test'); folders pass through with split ''."""
    name, _, split = spec.partition(":")
    if name.lower() in ("cifar10", "cifar100", "synthetic"):
        split = split or "train"
        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} in {spec!r}; use :train or :test")
        return name.lower(), split
    return spec, ""


def load_dataset(
    spec: str,
    image_size: int = 0,
    data_dir: str = "",
    max_per_class: int = 0,
    in_memory_max_side: int = 96,
    synthetic_train: int = 4000,
    synthetic_test: int = 1000,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageSet:
    """Load a dataset by spec (see the module docstring)."""
    if not spec:
        raise DataError("no data given: pass --data PATH (an image folder, cifar10, cifar100 or synthetic)")
    name, split = parse_spec(spec)
    if name in CIFAR_SOURCES:
        ds = load_cifar(name, split, data_dir)
    elif name == "synthetic":
        # Different seeds for the two splits: test images are never training images.
        ds = synthetic_images(synthetic_train if split == "train" else synthetic_test, seed=1 if split == "train" else 2)
    else:
        return load_folder(name, image_size, max_per_class, in_memory_max_side, strict, max_pixels)
    if max_per_class:
        keep = torch.cat([torch.nonzero(ds.labels == c).squeeze(1)[:max_per_class] for c in range(len(ds.classes))]).sort().values
        ds = ds.subset(keep)
    if image_size and image_size != ds.side:
        from simclr.augment import center_resize

        ds.images = (center_resize(ds.images, image_size) * 255).round().to(torch.uint8)
    return ds


class _StreamDataset(torch.utils.data.Dataset):
    def __init__(self, ds: ImageSet):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> torch.Tensor:
        return _load_fixed(self.ds.paths[i], self.ds.load_size)


class Batches:
    """Shuffled, fixed-size training batches of (uint8 images, labels, indices).

    The order of epoch e is a pure function of (seed, e), so a resumed run sees the same batches.
    The last incomplete batch is dropped: every step has the same number of negatives.
    """

    def __init__(self, ds: ImageSet, batch_size: int, seed: int, num_workers: int = -1, drop_last: bool = True,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if len(ds) < batch_size * world_size and drop_last:
            raise DataError(
                f"the dataset has {len(ds)} images, fewer than one batch of {batch_size * world_size}; "
                "lower --batch-size or add images"
            )
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.drop_last, self.shuffle = drop_last, shuffle
        self.rank, self.world_size = rank, world_size
        if num_workers < 0:
            num_workers = min(8, max(1, (os.cpu_count() or 2) - 1))
        self.num_workers = num_workers if ds.images is None else 0

    def __len__(self) -> int:
        n, b = len(self.ds), self.batch_size * self.world_size
        return n // b if self.drop_last else math.ceil(n / b)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.ds))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.ds), generator=g)

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield (x uint8 (B, 3, S, S), y (B,), idx (B,)) for each step of ``epoch`` from ``start_step``."""
        order = self.order(epoch)
        gb = self.batch_size * self.world_size
        steps = []
        for s in range(start_step, len(self)):
            chunk = order[s * gb : (s + 1) * gb]
            # Each rank takes its own interleaved share of the global batch.
            steps.append(chunk[self.rank :: self.world_size])
        if self.ds.images is not None:
            for idx in steps:
                yield self.ds.images.index_select(0, idx), self.ds.labels[idx], idx
            return
        sampler = [idx.tolist() for idx in steps]
        loader = torch.utils.data.DataLoader(
            _StreamDataset(self.ds),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
        for idx, x in zip(steps, loader):
            yield x, self.ds.labels[idx], idx
