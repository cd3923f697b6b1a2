"""What every evaluation command starts from: the encoder (a pretrained run or a seeded random one),
its input size, the device and the data, prepared by one function (``prepare``); and the checks and
writers of what the commands leave behind (``check_output``, ``write_result``).

Every output is checked before any work starts (``check_output``: the folder, or a file's folder, can
be created and written), so a command never spends minutes on features to fail at its last line.
Results are written atomically (``simclr.checkpoint.atomic_write``): a failure keeps the previous file.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from simclr.checkpoint import Pretrained, atomic_write, find_checkpoint, load_run
from simclr.config import ConfigError, resolve_cifar_stem, validate
from simclr.data import DataError, ImageSet, load_dataset
from simclr.data.errors import printable
from simclr.model.resnet import build_encoder
from simclr.runtime import pick_device, seeded

__all__ = ["EvalInputs", "prepare", "random_encoder", "write_result", "check_output", "run_folder_of", "MIN_CLASSES"]

MIN_CLASSES = 2  # a classifier needs at least two classes to tell apart
NAME_MAX = 255  # bytes in one file name on Linux file systems (ext4, xfs, btrfs, tmpfs)


@dataclass
class EvalInputs:
    """The encoder (eval mode, on ``device``, channels-last), its input size and the loaded data."""

    encoder: torch.nn.Module
    image_size: int
    device: torch.device
    data: ImageSet | None
    test: ImageSet | None
    run: Pretrained | None  # None for a random encoder
    meta: dict
    out: Path | None = None  # where the command writes (checked by ``prepare``), None: nowhere
    crop_fraction: float | None = None  # the evaluation view's centre crop (eval.crop_fraction; None: auto)

    @property
    def name(self) -> str:
        return str(self.run.path.parent if self.run else "random-init")

    def features(self, net: torch.nn.Module | None = None, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre-view features of the training and test sets, (N_train, D) and (N_test, D), through ``net``
        (default: the encoder, so h)."""
        from simclr.evaluate.features import extract_features

        net = net if net is not None else self.encoder
        return tuple(extract_features(net, ds, self.image_size, self.device, batch_size, crop_fraction=self.crop_fraction)
                     for ds in (self.data, self.test))

    def network(self, projection: bool = False) -> torch.nn.Module:
        """What the command reads features from: the encoder (h), or with ``projection`` the encoder followed by
        the run's projection head (z = g(h), eval mode, on ``device``; ``num_features`` is the size of z)."""
        if not projection:
            return self.encoder
        if self.run is None:
            raise ConfigError("the projection z = g(h) needs a pretrained run's head: give --checkpoint, not --random-init")
        net = torch.nn.Sequential(self.encoder, self.run.head.to(self.device)).eval()
        net.num_features = self.run.head.out_dim
        return net


def random_encoder(arch: str, width: float, image_size: int, seed: int) -> torch.nn.Module:
    """A randomly initialised encoder (the baseline), seeded, with the stem the image size calls for."""
    with seeded(seed):
        return build_encoder(arch, width=width, cifar_stem=resolve_cifar_stem(None, image_size)).eval()


def run_folder_of(cfg) -> Path | None:
    """The folder of the run that ``cfg.encoder.checkpoint`` names (None for a random encoder), found
    without loading the checkpoint; CheckpointError when there is none."""
    ckpt = cfg.encoder.checkpoint
    return find_checkpoint(ckpt).parent if ckpt else None


def check_output(path: str | Path, kind: str = "dir") -> Path:
    """Make sure the command can write ``path`` before it does any work; ConfigError (one line) if not.

    ``kind="dir"``: ``path`` is a folder the command fills: it must not be an existing non-folder, and
    it (with any missing parents) must be creatable and writable. ``kind="file"``: ``path`` is a file
    written atomically: it must not be a folder, and its folder must accept the temporary file that
    ``simclr.checkpoint.atomic_write`` creates next to it (which also refuses names too long for the
    file system). The check leaves nothing behind: folders it had to create are removed again.
    """
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    p = Path(path)
    shown = printable(p)
    if not str(path):
        raise ConfigError("the output path is empty")
    try:
        if kind == "dir" and p.exists() and not p.is_dir():
            raise ConfigError(f"cannot write into {shown}: it is a file, not a folder (choose another --out)")
        if kind == "file" and p.is_dir():
            raise ConfigError(f"cannot write {shown}: it is a folder (give a file name with --out)")
        if kind == "file" and p.exists() and not p.is_file():
            raise ConfigError(f"cannot write {shown}: it is not a regular file")
        folder = p if kind == "dir" else (p.parent if str(p.parent) else Path("."))
        created = _make_folders(folder)
        try:
            prefix = f".{p.name}." if kind == "file" else ".simclr-write-test."
            fd, probe = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
            os.close(fd)
            os.remove(probe)
        finally:
            for d in reversed(created):
                try:
                    d.rmdir()
                except OSError:
                    pass
    except OSError as e:
        what = "into" if kind == "dir" else ""
        reason = e.strerror or type(e).__name__
        if e.errno == errno.ENAMETOOLONG:
            if kind == "file" and len(os.fsencode(p.name)) <= NAME_MAX:
                reason += (f" (the temporary file written next to it first, .{printable(p.name)[:20]}....tmp, would be; "
                           f"use a shorter name)")
            else:
                reason += f" (a name in the path is longer than the file system allows, {NAME_MAX} bytes on most)"
        raise ConfigError(f"cannot write {what + ' ' if what else ''}{shown}: {reason}; choose another --out") from None
    return p


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders created, outermost first."""
    missing = []
    d = folder
    while not d.exists():
        if d.is_symlink():  # a dangling link: mkdir would fail with a confusing EEXIST
            raise FileNotFoundError(errno.ENOENT, "it is a link to nothing", str(d))
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
    except OSError:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        raise
    return created


def prepare(cfg, labelled: bool = False, with_test: bool = False, load_data: bool = True,
            out: Callable[[Path | None], str | Path | None] | None = None, out_kind: str = "dir", log=None) -> EvalInputs:
    """Validate ``cfg`` (an evaluation command's config) and load what the command needs.

    ``out``, when given, maps the run folder (None for a random encoder) to where the command will
    write (None: nowhere); that place is checked (``check_output`` with ``out_kind``) right after the
    config, before the checkpoint or the data is read, and returned as ``EvalInputs.out``.

    Unreadable images are skipped (as in pretraining); ``log``, when given, gets one line per data set
    that had some. A checkpoint fixes the input size before the data is read (unless data.image_size is given);
    a random encoder takes data.image_size or the data's own side. ``labelled`` requires labels (and
    training images of at least two classes); ``with_test`` also loads data.val_path, whose classes must be those of
    data.path or some of them (its labels are then mapped onto data.path's classes).
    """
    validate(cfg)
    target = None
    if out is not None:
        target = out(run_folder_of(cfg))
        target = check_output(target, out_kind) if target else None
    device = pick_device(cfg.eval.device)
    src = cfg.encoder
    run = load_run(src.checkpoint) if src.checkpoint else None
    size = cfg.data.image_size if hasattr(cfg, "data") and cfg.data.image_size else (run.image_size if run else None)
    data = test = None
    if load_data:
        data_cfg = dataclasses.replace(cfg.data, image_size=size)
        data = _load(cfg.data.path, data_cfg, labelled)
        size = size or data.side
        if with_test:
            test = _load(cfg.data.val_path, dataclasses.replace(data_cfg, image_size=size), labelled, training=False)
            test = _match_classes(data, test, cfg.data.path, cfg.data.val_path)
        for spec, ds in ((cfg.data.path, data), (cfg.data.val_path, test)):
            if ds is not None and ds.bad and log is not None:
                path, why = ds.bad[0]
                log(f"skipped {len(ds.bad)} unreadable file(s) of {printable(spec)}, e.g. {printable(path)}: {printable(why)}")
    if run is not None:
        encoder, meta = run.encoder, dict(run.meta)
    else:
        encoder = random_encoder(src.arch, src.width, size, cfg.eval.seed)
        meta = {"arch": src.arch, "width": src.width, "cifar_stem": resolve_cifar_stem(None, size), "image_size": size, "epoch": 0}
    encoder = encoder.to(device, memory_format=torch.channels_last)
    return EvalInputs(encoder, size or meta["image_size"], device, data, test, run, meta, target,
                      getattr(cfg.eval, "crop_fraction", None))


def _load(spec: str, data_cfg, labelled: bool, training: bool = True) -> ImageSet:
    ds = load_dataset(spec, data_cfg)
    if labelled and not ds.has_labels:
        raise DataError(f"{printable(spec)} has no labels: evaluation needs a folder with one subfolder per class")
    if labelled and training:  # a test set may hold a single class
        present = int(torch.unique(ds.labels).numel())
        if present < MIN_CLASSES:
            raise DataError(f"{printable(spec)} has images of {present} class: a classifier needs at least {MIN_CLASSES} "
                            f"(one subfolder of images per class)")
    return ds


def _names(classes: list[str], n: int = 5) -> str:
    shown = ", ".join(printable(c) for c in classes[:n])
    return shown + (f" and {len(classes) - n} more" if len(classes) > n else "")


def _match_classes(train: ImageSet, test: ImageSet, train_spec: str, test_spec: str) -> ImageSet:
    """``test`` with labels indexing ``train.classes``. A test set may lack some training classes (its
    labels are remapped); a test class the training data does not have is refused (DataError)."""
    if test.classes == train.classes:
        return test
    unknown = [c for c in test.classes if c not in set(train.classes)]
    if unknown:
        raise DataError(f"{printable(test_spec)} has classes that {printable(train_spec)} lacks: {_names(unknown)} "
                        f"(the test classes must be training classes)")
    index = {c: i for i, c in enumerate(train.classes)}
    mapping = torch.tensor([index[c] for c in test.classes], dtype=torch.long)
    return dataclasses.replace(test, labels=mapping[test.labels], classes=list(train.classes))


def write_result(folder: str | Path | None, name: str, res: dict) -> None:
    """Save an evaluation result as FOLDER/name.json (FOLDER is created; written atomically)."""
    import json

    if folder:
        text = json.dumps(res, indent=2) + "\n"  # ASCII: undecodable file-name bytes become \udcXX escapes
        atomic_write(Path(folder) / f"{name}.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
