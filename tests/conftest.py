import os
from pathlib import Path

import pytest

# precision auto picks bf16 on CPUs with native bf16 (simclr.runtime.native_bf16_cpu): pinned off for the suite,
# subprocesses included, so that its figures do not depend on the processor CI happens to run on.
os.environ["SIMCLR_CPU_BF16"] = "0"

# Under pytest-xdist (make test: -n 2) each worker gets one thread, and so do the subprocesses it starts: two
# workers of two threads each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

CIFAR_JPEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    # Never touch the user's cache; tests that need CIFAR archives serve their own.
    monkeypatch.setenv("SIMCLR_DATA_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def cifar_jpeg() -> Path:
    if not CIFAR_JPEG.is_dir():
        pytest.skip(f"{CIFAR_JPEG} is not present")
    return CIFAR_JPEG


def write_folder(root: Path, per_class: int = 6, classes=("a", "b"), size=(12, 12), mode="RGB", seed=0) -> Path:
    """A small labelled image folder of random pictures."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / c / f"{i:03d}.png")
    return root


os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A pretraining run on 96 synthetic 16px images (seconds), shared by the evaluation tests."""
    from simclr.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    args = ["pretrain", "--data", "synthetic", "--data.synthetic_train", "96", "--data.synthetic_test", "40",
            "--data.image_size", "16", "--arch", "resnet18", "--width", "0.125", "--batch-size", "32", "--device", "cpu",
            "--train.progress", "false", "--monitor.knn_every", "0", "--epochs", "1", "--head.num_layers", "3",
            "--out", str(out)]
    assert main(args) == 0
    return out


def simclr_model(num_classes: int = 0, **keys):
    """A small SimCLR module built from config keys (``model_width=0.25`` sets model.width); defaults:
    ResNet-18 width 0.125 with the CIFAR stem, a 2-layer head to 32-d, temperature 0.5."""
    from simclr.config import Config, config_from_flat
    from simclr.model import SimCLR

    flat = {"model.arch": "resnet18", "model.width": 0.125, "model.cifar_stem": True, "head.out_dim": 32, "loss.temperature": 0.5}
    flat.update({k.replace("_", ".", 1): v for k, v in keys.items()})
    return SimCLR.from_config(config_from_flat(flat, Config()), num_classes)


def tiny_config(out, **keys):
    """A pretraining config of seconds: 64 synthetic 16 px images, ResNet-18 width 0.125, batch 16 (4 steps an
    epoch), 3 epochs, no kNN monitor; ``keys`` are dotted keys with '.' written as '__' (``train__epochs=2``)."""
    from simclr.config import Config, config_from_flat

    flat = {"data.path": "synthetic", "data.synthetic_train": 64, "data.image_size": 16, "model.arch": "resnet18",
            "model.width": 0.125, "train.batch_size": 16, "train.epochs": 3, "train.device": "cpu", "train.progress": False,
            "train.out": str(out), "monitor.knn_every": 0}
    flat.update({k.replace("__", "."): v for k, v in keys.items()})
    return config_from_flat(flat, Config())


def pytest_collection_modifyitems(config, items):
    """The long (``slow``) tests first, in their usual order, then the rest: under ``-n 2`` a half-minute test that
    starts last keeps one worker busy while the other idles, and the suite waits for it."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
