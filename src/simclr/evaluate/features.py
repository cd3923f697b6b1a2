"""Feature extraction: the one loop that runs a frozen network over a dataset, for kNN, the linear
probes, fine-tuning's test pass, embeddings and the analysis."""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from simclr.config import ConfigError, resolve_crop_fraction
from simclr.data.augment import center_resize
from simclr.data.batches import _worker_errors, ignore_signals
from simclr.data.errors import DataError, describe

__all__ = ["extract_features", "out_of_memory_as_error"]

MAX_BATCH_BYTES = 1 << 28  # float32 input views per batch (256 MiB): 445 images of 224px, 1 of 4096px


@contextlib.contextmanager
def out_of_memory_as_error(what: str):
    """Turn running out of memory (CUDA's OutOfMemoryError, the CPU allocator's RuntimeError) into a
    one-line ConfigError that says what to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise ConfigError(f"out of memory {what}; lower --batch-size or --image-size") from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):
            raise
        raise ConfigError(f"out of memory {what}; lower --batch-size or --image-size") from None


def _batches(indices: torch.Tensor, batch_size: int, image_size: int):
    """``indices`` in batches of ``batch_size``, fewer when the batch's float32 views would pass
    ``MAX_BATCH_BYTES`` (eval-mode outputs do not depend on the batch)."""
    per_image = 3 * image_size * image_size * 4
    return indices.split(max(1, min(batch_size, MAX_BATCH_BYTES // per_image)))


class _Failed:
    """A DataError raised by ``ds.get`` in a loader worker, sent back as the item: the main process raises
    it again with its own type and one-line message (DataLoader would re-raise it with a traceback text)."""

    def __init__(self, error: DataError):
        self.error = error


class _DecodedBatches(torch.utils.data.Dataset):
    """Item k: ``ds.get(batches[k])`` (uint8), decoded by a loader worker, or ``_Failed``."""

    def __init__(self, ds, batches: list[torch.Tensor]):
        self.ds, self.batches = ds, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        try:
            return self.ds.get(self.batches[k])
        except DataError as e:
            return _Failed(e)


def _decoded(ds, batches: list[torch.Tensor], num_workers: int, pin_memory: bool):
    """``ds.get(idx)`` for each of ``batches``, in order: from ``num_workers`` loader processes (at most one
    per batch) for a streamed ``ds``, else (or when the workers cannot be started) in this process."""
    workers = min(num_workers, len(batches)) if getattr(ds, "images", False) is None else 0
    it = None
    if workers > 0:
        loader = torch.utils.data.DataLoader(
            _DecodedBatches(ds, batches), batch_size=None, shuffle=False, num_workers=workers,
            worker_init_fn=ignore_signals, pin_memory=pin_memory, persistent_workers=False,
        )
        try:
            it = iter(loader)  # starts the worker processes
        except (OSError, RuntimeError) as e:
            print(f"warning: cannot start {workers} data loading workers ({describe(e)}); decoding images in the main process",
                  file=sys.stderr)
            it = None
    if it is None:
        for idx in batches:
            yield ds.get(idx)
        return
    try:
        for _ in range(len(batches)):
            x = _worker_errors(lambda: next(it))  # a worker that died: one-line DataError
            if isinstance(x, _Failed):
                raise x.error from None
            yield x
    finally:
        # Shut the workers down now (also on an error or an early stop), not when the iterator is collected.
        it._shutdown_workers()


@torch.no_grad()
def extract_features(
    net: nn.Module,
    ds,
    image_size: int,
    device: torch.device,
    batch_size: int = 256,
    *,
    head: nn.Module | None = None,
    indices: torch.Tensor | None = None,
    augment=None,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
    progress: bool = False,
    crop_fraction: float | None = None,
    num_workers: int = 0,
):
    """Outputs of ``net`` in eval mode for the images of ``ds`` (an ImageSet), in order.

    Args:
        net: maps images (B, 3, S, S) in [0, 1] to (B, D): an encoder (h), or a whole classifier (logits).
        ds: anything with ``get(idx) -> uint8 (len(idx), 3, H, W)`` and ``len``.
        image_size: S; the view is the centred square of ``crop_fraction`` of the shorter side resized to
            S (``simclr.data.augment.center_resize``), unless ``augment`` is given.
        head: when given, also ``head(h)``; the result is then the pair (h, z).
        indices: which images (default: all), as a 1-D int64 tensor.
        augment: a ``SimCLRAugment`` to draw random views instead of centre views (with ``generator``).
        progress: show a progress bar (on a terminal only).
        crop_fraction: None is auto (``simclr.config.resolve_crop_fraction``: 0.875 above 32px, else 1).
        num_workers: for a streamed ``ds`` (``ds.images is None``), decode the batches in this many DataLoader
            worker processes (ignoring SIGINT/SIGTERM/SIGHUP) while the network runs; 0 (and in-memory sets):
            in this process. The outputs are the same either way, in the same order; a ``DataError`` (such as
            ``BadImageError``) of a worker is raised here as is, a worker that dies is a one-line ``DataError``,
            and workers that cannot be started fall back to this process (with a warning).

    Returns:
        float32 (len(indices), D) on the CPU, or (h, z) with ``head``. Train/eval modes are restored.
    """
    idx_all = torch.arange(len(ds)) if indices is None else indices
    fraction = resolve_crop_fraction(crop_fraction, image_size)
    modules = [m for m in (net, head) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal (a log file keeps only the messages)
        bar = tqdm(total=len(idx_all), desc="features", unit="img", dynamic_ncols=True, leave=False, disable=None)
    hs, zs = [], []
    batches = list(_batches(idx_all, batch_size, image_size))
    decoded = _decoded(ds, batches, num_workers, torch.device(device).type == "cuda")
    try:
        for idx in batches:
            with out_of_memory_as_error(f"computing features of {len(idx)} images of {image_size}px on {device}"):
                x = next(decoded).to(device, non_blocking=True)
                x = augment(x, generator) if augment is not None else center_resize(x, image_size, fraction)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                h = net(x)
            hs.append(h.float().cpu())
            if head is not None:
                zs.append(head(h).float().cpu())
            if bar is not None:
                bar.update(len(idx))
    finally:
        decoded.close()  # stops the loader workers now when the loop ended early
        for m, mode in zip(modules, modes):
            m.train(mode)
        if bar is not None:
            bar.close()
    h = torch.cat(hs) if hs else torch.zeros(0, 0)
    return (h, torch.cat(zs)) if head is not None else h
