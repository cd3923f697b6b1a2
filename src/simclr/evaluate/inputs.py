"""What every evaluation command starts from: the encoder (a pretrained run or a seeded random one),
its input size, the device and the data, prepared by one function (``prepare``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from simclr.checkpoint import Pretrained, load_run
from simclr.config import resolve_cifar_stem, validate
from simclr.data import DataError, ImageSet, load_dataset
from simclr.model.resnet import build_encoder
from simclr.runtime import pick_device, seeded

__all__ = ["EvalInputs", "prepare", "random_encoder", "write_result"]


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

    @property
    def name(self) -> str:
        return str(self.run.path.parent if self.run else "random-init")

    @property
    def run_folder(self) -> Path | None:
        """The run folder when the encoder came from one (results are written there by default)."""
        return self.run.path.parent if self.run else None


def random_encoder(arch: str, width: float, image_size: int, seed: int) -> torch.nn.Module:
    """A randomly initialised encoder (the baseline), seeded, with the stem the image size calls for."""
    with seeded(seed):
        return build_encoder(arch, width=width, cifar_stem=resolve_cifar_stem(None, image_size)).eval()


def prepare(cfg, labelled: bool = False, with_test: bool = False, load_data: bool = True) -> EvalInputs:
    """Validate ``cfg`` (an evaluation command's config) and load what the command needs.

    A checkpoint fixes the input size before the data is read (unless data.image_size is given);
    a random encoder takes data.image_size or the data's own side. ``labelled`` requires labels;
    ``with_test`` also loads data.val_path (same classes as data.path).
    """
    validate(cfg)
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
            test = _load(cfg.data.val_path, dataclasses.replace(data_cfg, image_size=size), labelled)
            if test.classes != data.classes:
                raise DataError(f"train and test classes differ: {data.classes[:5]}... vs {test.classes[:5]}...")
    if run is not None:
        encoder, meta = run.encoder, dict(run.meta)
    else:
        encoder = random_encoder(src.arch, src.width, size, cfg.eval.seed)
        meta = {"arch": src.arch, "width": src.width, "cifar_stem": resolve_cifar_stem(None, size), "image_size": size, "epoch": 0}
    encoder = encoder.to(device, memory_format=torch.channels_last)
    return EvalInputs(encoder, size or meta["image_size"], device, data, test, run, meta)


def _load(spec: str, data_cfg, labelled: bool) -> ImageSet:
    ds = load_dataset(spec, data_cfg)
    if labelled and not ds.has_labels:
        raise DataError(f"{spec} has no labels: evaluation needs a folder with one subfolder per class")
    return ds


def write_result(folder: str | Path | None, name: str, res: dict) -> None:
    """Save an evaluation result as FOLDER/name.json (FOLDER is created)."""
    import json

    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
