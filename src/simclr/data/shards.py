"""WebDataset tar shards: the spec, the index of every sample, and the epoch order of shard sets.

A shard spec (``--data``) is one of

* a ``.tar`` file: ``shards/train-000000.tar``;
* a brace pattern: ``shards/train-{000000..000031}.tar`` (``{a,b}`` lists too);
* several of these joined by ``::`` (WebDataset's list separator): ``a/train-{0..3}.tar::b/extra.tar``;
* a folder that holds ``*.tar`` files and nothing a folder dataset would read (no image files, no
  subfolders): all its ``.tar`` files, sorted by name.

Shards are plain (uncompressed) tar files on a local or mounted file system, in the WebDataset layout:
members ``KEY.EXT`` where consecutive members with the same key form one sample (keys and extensions
are split by WebDataset's own ``base_plus_ext``). A sample's image is its member with an image
extension (``jpg``, ``jpeg``, ``png``, ``webp``, ... as for folders; case-insensitive), and its label
the integer text of its ``.cls`` member, -1 when there is none. Samples without an image (metadata
entries) are ignored. Classes are named ``"0"`` ... ``"K-1"`` after the largest label.

The index. ``load_shards`` scans the tar headers of every shard once per process (threads, one per shard at
a time; no image is read: tarfile seeks over member data; tens of microseconds a sample, so about a
minute for ImageNet's 1.28M) and keeps, per sample, its shard, the byte offset
and size of its image member and its key; ``.cls`` members are read there (a few bytes each). Sample
``i`` of the set (its ``idx`` in training batches, its row in ``ImageSet.labels``) is its position in
the spec's shard order, then in tar order: one distinct integer per source image. With the offsets
any sample is read on its own (``ShardIndex.read``: one ``pread``), so evaluation and the kNN monitor
read shard sets by random access (``ImageSet.get``) like folders, and so does training.

Small images (at most ``data.in_memory_max_side``, judged from the headers of up to 64 samples spread
over the set, as for folders) are decoded once into memory; larger ones are streamed by ``Batches``'s
DataLoader workers, each through the same ``ViewCropper`` as streamed folder files.

The epoch order (``ShardIndex.order``) is a pure function of (seed, epoch): the shards are shuffled
(a permutation drawn from the epoch's generator), their samples are concatenated in that order, and
the sequence is shuffled within a sliding window of ``SHUFFLE_WINDOW`` samples (each position is
jittered by ``U[0, window)`` and the sequence sorted again: the index-level equivalent of a seeded
shuffle buffer of that size, computed in one vectorised sort, no data read). ``Batches`` then cuts
this order exactly as for folders: global batch ``s`` is positions ``[s*B*W, (s+1)*B*W)``, rank ``r``
takes every W-th of them from ``r`` (so the ranks together see each image of the epoch exactly once,
and the global batches do not depend on the number of ranks), each step goes to one DataLoader worker
in turn (``batch_sampler``: results come back in step order), and the final partial global batch is
dropped: every rank runs ``len(index) // (B*W)`` steps of B images, counted from the index before
anything is read. A resume at ``start_step`` computes the same order and starts at that step: the
skipped samples are neither read nor decoded. Each image's crop generator is seeded by (seed, epoch,
its global index), as for folders.

Undecodable samples follow the policy of streamed folder files (``simclr.data.batches``): a sample whose
data lies past the end of its shard, or a damaged tar header (the rest of that shard is unreadable), is
listed in ``ImageSet.bad`` at indexing; an image that fails to decode while training is replaced by the
next decodable sample (wrapping around) and listed once; with ``strict`` the first one raises
BadImageError. Bad samples are named ``SHARD#KEY``.

The trade-off against WebDataset's own pipeline (shard list -> ``split_by_node`` -> ``split_by_worker``
-> tar streaming -> ``shuffle``): a purely sequential stream splits whole shards over ranks and workers,
so unequal shards give ranks unequal step counts (DDP hangs) or images seen twice/never, its order
depends on the number of workers (a setting a resumed run may change), and a mid-epoch resume has to
replay the stream. Here reads are by offset instead: exact once-per-epoch, equal steps, an order
independent of workers and ranks, and an exact resume, at the price of reading images one by one
(within the window, i.e. from a few shards at a time) rather than one shard front to back: shards must
be seekable files (no ``http://`` or ``pipe:`` URLs, no compressed tars). From the library we use its
spec syntax (``expand_urls``: brace expansion, ``::`` lists) and its sample-key convention
(``base_plus_ext``); its tar iterators read member data but not their offsets, so the index scan uses
``tarfile``'s headers.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from simclr.config import DataConfig, default_image_size
from simclr.data.decode import load_fixed, load_size_for, open_image
from simclr.data.errors import BadImageError, DataError, describe, printable
from simclr.data.folder import IMAGE_EXTENSIONS
from simclr.data.imageset import ImageSet

__all__ = ["SHUFFLE_WINDOW", "ShardIndex", "is_shard_spec", "expand_shards", "scan_shard", "index_shards", "load_shards"]

SHUFFLE_WINDOW = 10_000  # samples: the epoch order's shuffle window (about 8 ImageNet shards of 1,250)
INSTALL_HINT = "pip install 'simclr[shards]'"
_IMAGE_EXTS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tar.lz4")
_PEEK = 64  # image headers read to judge the image size, as folders do
_MAX_OPEN = 32  # open shard files kept per process


def _webdataset():
    """The webdataset modules used here; a one-line DataError when the optional package is missing."""
    try:
        from webdataset import shardlists, tariterators
    except ImportError:
        raise DataError(f"reading WebDataset shards needs the webdataset package: {INSTALL_HINT}") from None
    return shardlists, tariterators


# -- the spec ---------------------------------------------------------------------------------

def _is_url(s: str) -> bool:
    return "://" in s or s.startswith("pipe:")


def _shard_folder(path: str) -> list[str] | None:
    """The sorted ``*.tar`` files of a folder that holds shards and nothing a folder dataset would read."""
    if not os.path.isdir(path):
        return None
    tars = []
    try:
        with os.scandir(path) as it:
            for e in it:
                name = e.name.lower()
                if name.startswith("."):
                    continue
                if e.is_dir() or name.endswith(IMAGE_EXTENSIONS):
                    return None  # an image folder (the first image or subfolder decides: no full scan)
                if name.endswith(".tar"):
                    tars.append(os.path.join(path, e.name))
    except OSError:  # unreadable: the folder loader reports it
        return None
    return sorted(tars) or None


def is_shard_spec(spec: str) -> bool:
    """True when ``spec`` names tar shards (see the module docstring), not an image folder."""
    s = spec.lower()
    return "::" in s or s.endswith(".tar") or s.endswith(_COMPRESSED) or _shard_folder(spec) is not None


def expand_shards(spec: str) -> list[str]:
    """The shard files of a spec, in order (DataError, one line, for a pattern or a file that cannot work)."""
    folder = _shard_folder(spec)
    if folder is not None:
        return folder
    shardlists, _ = _webdataset()
    try:
        paths = shardlists.expand_urls(spec)
    except Exception as e:  # braceexpand's UnbalancedBracesError, a missing ${WDS_...} variable
        raise DataError(f"bad shard pattern {printable(spec)}: {describe(e)}") from None
    for p in paths:
        low = p.lower()
        if _is_url(p):
            raise DataError(f"shards must be files on a local or mounted file system (read by offset), not URLs: {printable(p)}")
        if low.endswith(_COMPRESSED):
            raise DataError(f"compressed shards cannot be read by offset: {printable(p)}; use uncompressed .tar shards "
                            "(WebDataset's default)")
        if not low.endswith(".tar") or not p:
            raise DataError(f"not a .tar shard: {printable(p)!r} (a shard spec is a .tar file, a brace pattern such as "
                            "train-{000000..000031}.tar, several of them joined by '::', or a folder of .tar files)")
    seen: set[str] = set()
    for p in paths:
        if p in seen:
            raise DataError(f"shard {printable(p)} is listed twice in {printable(spec)}")
        seen.add(p)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" (and {len(missing) - 1} more of the {len(paths)} shards)" if len(missing) > 1 else ""
        raise DataError(f"shard not found: {printable(missing[0])}{more}")
    return paths


# -- the index --------------------------------------------------------------------------------

class ShardIndex:
    """Where every sample of a shard set lies: ``paths`` (the shards), and per sample (in index order)
    ``shard`` (int64 position in ``paths``), ``offset`` and ``size`` (int64 bytes of its image member)
    and ``keys`` (its WebDataset key). ``read(i)`` returns sample i's encoded image bytes; open shard
    files are kept per process (reads use ``os.pread``: no shared file position across workers).
    """

    def __init__(self, paths: list[str], shard, offset, size, keys: list[str]):
        self.paths = list(paths)
        self.shard = np.asarray(shard, dtype=np.int64)
        self.offset = np.asarray(offset, dtype=np.int64)
        self.size = np.asarray(size, dtype=np.int64)
        self.keys = list(keys)
        self._files: dict[str, int] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self):  # open files stay in their process
        state = self.__dict__.copy()
        state.update(_files={}, _pid=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self):
        self.close()

    def name(self, i: int) -> str:
        """``SHARD#KEY`` of sample i (how bad samples are listed)."""
        return f"{self.paths[self.shard[i]]}#{self.keys[i]}"

    def names(self, folder: bool = True) -> list[str]:
        """``SHARD#KEY`` of every sample; without ``folder`` the shard's file name only (where the shards lie
        left out, e.g. for a fingerprint of the data that survives moving it)."""
        paths = self.paths if folder else [os.path.basename(p) for p in self.paths]
        return [f"{paths[s]}#{k}" for s, k in zip(self.shard.tolist(), self.keys)]

    def subset(self, idx) -> "ShardIndex":
        i = np.asarray(torch.as_tensor(idx).tolist(), dtype=np.int64)
        return ShardIndex(self.paths, self.shard[i], self.offset[i], self.size[i], [self.keys[j] for j in i.tolist()])

    # -- reading --
    def close(self) -> None:
        files, self._files = getattr(self, "_files", {}), {}
        if getattr(self, "_pid", None) == os.getpid():
            for fd in files.values():
                try:
                    os.close(fd)
                except OSError:  # pragma: no cover
                    pass

    def _fd(self, path: str) -> int:
        """An open descriptor of ``path`` (call with ``_lock`` held: an evicted one is closed at once)."""
        fd = self._files.pop(path, None)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except FileNotFoundError:
                raise BadImageError("shard not found") from None
            except OSError as e:
                raise BadImageError(f"cannot read the shard ({describe(e)})") from None
            while len(self._files) >= _MAX_OPEN:
                os.close(self._files.pop(next(iter(self._files))))
        self._files[path] = fd  # most recently used last
        return fd

    def read(self, i: int) -> bytes:
        """The encoded image of sample i; BadImageError (the reason only) when it cannot be read."""
        path, off, n = self.paths[self.shard[i]], int(self.offset[i]), int(self.size[i])
        if n == 0:
            raise BadImageError("empty file")
        if self._pid != os.getpid():  # a forked worker: open its own files (the inherited ones are the parent's)
            self._files, self._pid, self._lock = {}, os.getpid(), threading.Lock()
        chunks, got = [], 0
        # One read at a time per process (loader workers are single-threaded; load_shards' threads mostly decode).
        with self._lock:
            fd = self._fd(path)
            try:
                while got < n:
                    if hasattr(os, "pread"):
                        b = os.pread(fd, n - got, off + got)
                    else:  # pragma: no cover - Windows
                        os.lseek(fd, off + got, os.SEEK_SET)
                        b = os.read(fd, n - got)
                    if not b:
                        raise BadImageError(f"the shard ends {n - got} bytes early (truncated after indexing?)")
                    chunks.append(b)
                    got += len(b)
            except OSError as e:
                raise BadImageError(f"cannot read the shard ({describe(e)})") from None
        return b"".join(chunks)

    # -- the epoch order --
    def order(self, seed: int, epoch: int, window: int = SHUFFLE_WINDOW) -> torch.Tensor:
        """The samples of epoch ``epoch`` in order (int64 (N,)): shards shuffled, then samples shuffled
        within a sliding window of ``window`` (see the module docstring). A pure function of (seed, epoch)."""
        n = len(self)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        shard_rank = torch.argsort(torch.randperm(len(self.paths), generator=g))  # position of each shard in the epoch
        rank = shard_rank[torch.from_numpy(self.shard)]
        stream = torch.sort(rank, stable=True).indices  # samples in shard order, tar order within a shard
        jitter = torch.rand(n, generator=g, dtype=torch.float64) * max(1, window)
        return stream[torch.argsort(torch.arange(n, dtype=torch.float64) + jitter)]


def _image_member(members: dict[str, tarfile.TarInfo]) -> tarfile.TarInfo | None:
    """A sample's image: an extension that is an image type (``jpg``), else one ending in one (``seg.png``)."""
    for ext, m in members.items():
        if ext in _IMAGE_EXTS:
            return m
    for ext, m in members.items():
        if ext.rsplit(".", 1)[-1] in _IMAGE_EXTS:
            return m
    return None


def scan_shard(path: str) -> tuple[list[str], list[int], list[int], list[int], list[tuple[str, str]]]:
    """Read one shard's tar headers: (keys, offsets, sizes, labels, bad) of its image samples, where bad
    lists (``SHARD#KEY``, reason) of samples that cannot be read (data past the end of the file, a damaged
    header). DataError for a shard that is missing, not a tar file, or has a .cls that is not an integer."""
    _, tariterators = _webdataset()
    shown = printable(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"shard not found: {shown}") from None
    except OSError as e:
        raise DataError(f"cannot read shard {shown}: {describe(e)}") from None
    keys, offsets, sizes, labels, bad = [], [], [], [], []
    with f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size == 0:
            raise DataError(f"empty shard (0 bytes): {shown}")
        try:
            tf = tarfile.open(fileobj=f, mode="r:")
        except tarfile.ReadError as e:
            raise DataError(f"not an uncompressed tar file: {shown} ({describe(e)})") from None
        samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
        damaged = None
        try:
            for m in tf:
                if not m.isreg():
                    continue
                key, ext = tariterators.base_plus_ext(m.name)
                if key is None:
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1].setdefault(ext.lower(), m)
        except tarfile.TarError as e:
            if tf.offset < file_size:  # past the end: a truncated shard, its last sample is listed below
                damaged = (tf.offset, describe(e))
        if damaged is None and tf.offset < file_size:
            # tarfile ends the member list silently at a broken header: anything but zeros there is damage.
            f.seek(tf.offset)
            rest = f.read(tarfile.BLOCKSIZE)
            if rest.strip(b"\0"):
                damaged = (tf.offset, "not a tar header")
        if damaged is not None:
            bad.append((f"{path}#@{damaged[0]}", f"damaged tar header at byte {damaged[0]} ({damaged[1]}): the rest of "
                                                 "the shard is unreadable"))
        for key, members in samples:
            m = _image_member(members)
            if m is None:
                continue
            if m.offset_data + m.size > file_size:
                bad.append((f"{path}#{key}", "truncated shard: the image ends past the end of the file"))
                continue
            label = -1
            cls = members.get("cls")
            if cls is not None:
                f.seek(cls.offset_data)
                text = f.read(min(cls.size, 64)).decode("utf-8", "replace").strip()
                try:
                    label = int(text)
                except ValueError:
                    label = -2
                if label < -1:
                    raise DataError(f"{printable(path)}#{printable(key)}: its .cls holds {text[:20]!r}, not a label "
                                    "(an integer >= 0, or -1 for unknown)")
            keys.append(key)
            offsets.append(m.offset_data)
            sizes.append(m.size)
            labels.append(label)
    if not keys and not bad:
        raise DataError(f"shard {shown} holds no images (looked for members KEY.{', KEY.'.join(_IMAGE_EXTS[:4])}, ...)")
    return keys, offsets, sizes, labels, bad


def index_shards(paths: list[str], threads: int | None = None) -> tuple[ShardIndex, torch.Tensor, list[tuple[str, str]]]:
    """Scan every shard (in threads): (the index, labels int64 (N,), bad samples found)."""
    threads = threads or max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        scans = list(pool.map(scan_shard, paths))
    shard, offset, size, keys, labels, bad = [], [], [], [], [], []
    for s, (k, o, n, y, b) in enumerate(scans):
        shard += [s] * len(k)
        offset += o
        size += n
        keys += k
        labels += y
        bad += b
    return ShardIndex(paths, shard, offset, size, keys), torch.tensor(labels, dtype=torch.long), bad


# -- the data set -----------------------------------------------------------------------------

def _raise_first(bad: list[tuple[str, str]]) -> None:
    raise BadImageError(f"unreadable image {printable(bad[0][0])}: {bad[0][1]} (without --strict such files are skipped)")


def load_shards(spec: str, cfg: DataConfig | None = None) -> ImageSet:
    """Index the shards of ``spec``; decode them into memory when their images are small, else stream them.

    Reads ``cfg.image_size`` (None = auto, as for folders), ``max_per_class`` (the first N samples of each
    label in index order), ``in_memory_max_side``, ``strict`` and ``max_pixels``.
    """
    cfg = cfg or DataConfig()
    paths = expand_shards(spec)
    threads = max(1, min(16, os.cpu_count() or 1))
    index, labels, bad = index_shards(paths, threads)
    if bad and cfg.strict:
        _raise_first(bad)
    if cfg.max_per_class:
        keep = torch.cat([torch.nonzero(labels == c).squeeze(1)[: cfg.max_per_class] for c in torch.unique(labels).tolist()])
        keep = keep.sort().values
        index, labels = index.subset(keep), labels[keep]
    if not len(index):
        raise DataError(f"no readable images in {printable(spec)} ({len(bad)} unreadable samples)")
    top = int(labels.max())
    classes = [str(c) for c in range(top + 1)]

    def header(i):
        try:
            with open_image(io.BytesIO(index.read(i)), cfg.max_pixels) as im:
                return im.size, None
        except BadImageError as e:
            return None, (index.name(i), str(e))

    peek = list(range(0, len(index), max(1, len(index) // _PEEK)))[:_PEEK]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        heads = list(pool.map(header, peek))
    sizes = [s for s, _ in heads if s is not None]
    found = [e for _, e in heads if e is not None]
    if found and cfg.strict:
        _raise_first(found)
    if not sizes:
        raise DataError(f"none of the {len(peek)} images checked in {printable(spec)} can be read, "
                        f"e.g. {printable(found[0][0])}: {found[0][1]}")
    side = max(max(s) for s in sizes)
    size = cfg.image_size or default_image_size(side, cfg.in_memory_max_side)
    if side > cfg.in_memory_max_side:
        # Streamed: samples that fail only now are found (and listed) by Batches while training.
        return ImageSet(labels=labels, classes=classes, shards=index, load_size=load_size_for(size), bad=bad,
                        max_pixels=cfg.max_pixels)

    def full(i):
        try:
            return load_fixed(io.BytesIO(index.read(i)), size, cfg.max_pixels), None
        except BadImageError as e:
            return None, (index.name(i), str(e))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        decoded = list(pool.map(full, range(len(index)), chunksize=64))
    failed = [e for _, e in decoded if e is not None]
    if failed and cfg.strict:
        _raise_first(failed)
    keep = [i for i, (x, _) in enumerate(decoded) if x is not None]
    if not keep:
        raise DataError(f"no readable images in {printable(spec)} ({len(bad) + len(failed)} unreadable samples)")
    keep_t = torch.tensor(keep, dtype=torch.long)
    return ImageSet(labels=labels[keep_t], classes=classes, images=torch.stack([decoded[i][0] for i in keep]),
                    shards=index.subset(keep_t), bad=bad + failed, max_pixels=cfg.max_pixels)
