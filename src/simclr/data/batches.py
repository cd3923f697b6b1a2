"""Training batches: a fixed, seeded order of fixed-size batches, sliced from memory or streamed.

``Batches`` yields (uint8 images, labels, indices) per step. The order of an epoch is a pure
function of (seed, epoch), so a resumed run sees the same batches. In-memory sets are sliced
directly. Streamed sets are decoded by DataLoader worker processes (re-created each epoch) with
the policy for files that fail only now (truncated after a valid header, deleted, replaced while
training): the failing image is replaced by the next decodable image of the dataset (wrapping
around), so every step keeps its size and the batches stay a pure function of (seed, epoch, the
set of bad files); the failure travels back with the batch and the main process appends it to
``ImageSet.bad`` once. With ``strict`` the first such file raises BadImageError in the main
process instead. Given a ``ViewCropper``, streamed items are the two training views of each image cut
from its full frame (uint8 (2, 3, S, S)), their boxes drawn from a generator seeded by (seed, epoch,
the image's index in the data set), so resumed and uninterrupted runs cut the same views. Workers ignore SIGINT, SIGTERM and SIGHUP: a scheduler signalling the whole
process group reaches only the main process, which can checkpoint and stop cleanly.

Sets read from WebDataset tar shards (``ImageSet.shards``) follow the same path: their epoch order is
``ShardIndex.order`` (shards shuffled, then samples within a window: reads stay within a few shards at
a time), cut into steps, ranks and workers exactly as above, and each image's bytes are read by offset
(``ShardIndex.read``) instead of from a file; failures are named ``SHARD#KEY`` (``simclr.data.shards``).
"""

from __future__ import annotations

import io
import math
import signal

import torch

from simclr.config import default_num_workers
from simclr.data.crop import ViewCropper
from simclr.data.decode import load_fixed
from simclr.data.errors import BadImageError, DataError, describe, printable
from simclr.data.imageset import ImageSet

__all__ = ["Batches", "StreamedImages", "ignore_signals", "WORKER_IGNORED_SIGNALS"]

# Left to the main process: workers ignore them (job schedulers signal the whole process group).
WORKER_IGNORED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def ignore_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: leave SIGINT, SIGTERM and SIGHUP to the main process."""
    for s in WORKER_IGNORED_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def image_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's loader-side draws in one epoch (a pure function, for exact resume)."""
    return ((seed * 1_000_003 + epoch) * 2_654_435_761 + index * 40_503 + 17) % (2**63)


class StreamedImages(torch.utils.data.Dataset):
    """Decodes file ``i`` (of ``paths``, or sample ``i`` of ``shards``, a ``ShardIndex``, when given);
    item = (uint8 image or None, index used, failures).

    The image is (3, L, L) at ``load_size`` (shorter side resized, centre square), or, with ``cropper``,
    the two training views (2, 3, S, S) cut from the full frame with a generator seeded by
    ``image_seed(seed, epoch, i)``. A file that fails is replaced by the next decodable file (wrapping
    around); ``failures`` lists the (path, reason) found on the way. Files in ``known_bad`` are not
    tried again. With ``strict`` there is no replacement: the image is None and the failure is
    reported. None is also returned when no file of the set can be decoded.
    """

    def __init__(self, paths: list[str] | None, load_size: int, max_pixels: int, known_bad: frozenset[str] = frozenset(),
                 strict: bool = False, cropper: ViewCropper | None = None, seed: int = 0, epoch: int = 0, shards=None):
        self.paths, self.load_size, self.max_pixels, self.strict = paths, load_size, max_pixels, strict
        self.cropper, self.seed, self.epoch, self.shards = cropper, seed, epoch, shards
        self.bad = set(known_bad)  # grows in each process as files fail; skipping = failing again

    def _name(self, j: int) -> str:
        return self.paths[j] if self.shards is None else self.shards.name(j)

    def _load(self, j: int, i: int) -> torch.Tensor:
        if self.shards is None:
            src = self.paths[j]
        else:
            src = self.shards.read(j)  # the encoded bytes; BadImageError when they cannot be read
        if self.cropper is None:
            return load_fixed(src if self.shards is None else io.BytesIO(src), self.load_size, self.max_pixels)
        # Seeded by the requested position i, not the replacement's index: a replacement that is also
        # in the batch still gets views of its own.
        return self.cropper(src, torch.Generator().manual_seed(image_seed(self.seed, self.epoch, i)))

    def __len__(self) -> int:
        return len(self.paths) if self.shards is None else len(self.shards)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, list[tuple[str, str]]]:
        n = len(self)
        found: list[tuple[str, str]] = []
        for k in range(n):
            j = (i + k) % n
            path = self._name(j)
            if path in self.bad:
                continue
            try:
                return self._load(j, i), j, found
            except Exception as e:  # BadImageError, and anything else a broken file can raise
                self.bad.add(path)
                found.append((path, str(e) if isinstance(e, BadImageError) else describe(e)))
                if self.strict:
                    break
        return None, i, found


def collate(items: list[tuple[torch.Tensor | None, int, list[tuple[str, str]]]]):
    """(x uint8 (B, 3, S, S) or (B, 2, 3, S, S), or None if any image is missing, used indices (B,), failures)."""
    xs, used, failures = zip(*items)
    x = None if any(t is None for t in xs) else torch.utils.data.default_collate(list(xs))
    return x, torch.tensor(used, dtype=torch.long), [f for item in failures for f in item]


class Batches:
    """Shuffled, fixed-size training batches of (uint8 images, labels, indices).

    The order of epoch e is a pure function of (seed, e), so a resumed run sees the same batches.
    The last incomplete batch is dropped: every step has the same number of negatives. With
    ``world_size`` > 1 each rank takes its interleaved share of every global batch.
    ``num_workers`` None is ``simclr.config.default_num_workers()`` (streamed sets only; in-memory
    sets are sliced in the main process). For streamed sets the yielded indices (and labels) are
    those of the images actually in the batch: a replacement's own index, not the failed one's.
    With ``cropper`` (streamed sets only) each streamed image is its two training views cut from its
    full frame: x is uint8 (B, 2, 3, S, S).
    """

    def __init__(self, ds: ImageSet, batch_size: int, seed: int, num_workers: int | None = None, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, shuffle: bool = True, strict: bool = False,
                 cropper: ViewCropper | None = None):
        if len(ds) < batch_size * world_size and drop_last:
            raise DataError(
                f"the dataset has {len(ds)} images, fewer than one batch of {batch_size * world_size}; "
                "lower --batch-size or add images"
            )
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.drop_last, self.shuffle, self.strict = drop_last, shuffle, strict
        self.rank, self.world_size = rank, world_size
        if num_workers is None:
            num_workers = default_num_workers()
        self.num_workers = num_workers if ds.images is None else 0
        self.cropper = cropper if ds.images is None else None

    def __len__(self) -> int:
        n, b = len(self.ds), self.batch_size * self.world_size
        return n // b if self.drop_last else math.ceil(n / b)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.ds))
        if self.ds.shards is not None and self.ds.images is None:  # streamed shards: shard by shard, a window shuffled
            return self.ds.shards.order(self.seed, epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.ds), generator=g)

    def steps(self, epoch: int, start_step: int = 0) -> list[torch.Tensor]:
        """This rank's dataset indices for each step of ``epoch`` from ``start_step``."""
        order = self.order(epoch)
        gb = self.batch_size * self.world_size
        # Each rank takes its own interleaved share of the global batch.
        return [order[s * gb : (s + 1) * gb][self.rank :: self.world_size] for s in range(start_step, len(self))]

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield (x uint8 (B, 3, S, S), or (B, 2, 3, S, S) with a cropper, y (B,), idx (B,)) for each
        step of ``epoch`` from ``start_step``."""
        steps = self.steps(epoch, start_step)
        if self.ds.images is not None:
            for idx in steps:
                yield self.ds.images.index_select(0, idx), self.ds.labels[idx], idx
            return
        yield from self._streamed(steps, epoch)

    def _streamed(self, steps: list[torch.Tensor], epoch: int):
        ds = self.ds
        known = {p for p, _ in ds.bad}
        loader = torch.utils.data.DataLoader(
            # strict: every file is tried again, so that a known bad one still stops the run
            StreamedImages(ds.paths, ds.load_size, ds.max_pixels, frozenset() if self.strict else frozenset(known), self.strict,
                           self.cropper, self.seed, epoch, shards=ds.shards),
            batch_sampler=[idx.tolist() for idx in steps],
            num_workers=self.num_workers,
            collate_fn=collate,
            worker_init_fn=ignore_signals if self.num_workers else None,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
        it = None
        try:
            it = _worker_errors(lambda: iter(loader))  # a worker may die while the iterator starts them
            yield from self._checked(it, len(steps), known)
        finally:
            # Shut the workers down now (also when the consumer stops early or an error is raised),
            # not whenever the garbage collector reaches an iterator kept alive by a traceback.
            shutdown = getattr(it, "_shutdown_workers", None) if it is not None else None  # multi-process iterators only
            if shutdown is not None:
                shutdown()

    def _checked(self, it, n_steps: int, known: set[str]):
        ds = self.ds
        for _ in range(n_steps):
            try:
                x, used, failures = _worker_errors(lambda: next(it))
            except StopIteration:  # pragma: no cover - the sampler has exactly n_steps batches
                return
            for path, why in failures:
                if path not in known:
                    known.add(path)
                    ds.bad.append((path, why))
            if failures and self.strict:
                path, why = failures[0]
                raise BadImageError(f"unreadable image {printable(path)}: {why} (without --strict such files are skipped)")
            if x is None:
                raise DataError(f"none of the {len(ds)} images of the data set could be decoded")
            yield x, ds.labels[used], used


def is_worker_failure(e: BaseException) -> bool:
    """True for PyTorch's errors about a loader worker that died or failed (raised by ``next``, or by its
    SIGCHLD handler at any moment while workers run)."""
    return isinstance(e, RuntimeError) and "DataLoader worker" in str(e)


def _worker_errors(call):
    """``call()``, with a loader worker's death (out of memory, a signal) as a one-line DataError."""
    try:
        return call()
    except RuntimeError as e:
        if not is_worker_failure(e):
            raise
        raise DataError(f"a data loading worker failed: {describe(e)}") from None
