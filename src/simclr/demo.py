"""A laptop-sized demonstration: SimCLR on the built-in synthetic shapes, no download.

Pretrains a small ResNet-18 for a minute or two on CPU, then compares the kNN accuracy of its
representation with that of a randomly initialised copy on held-out images, and draws the loss
curve and a grid of augmented view pairs into the run folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from simclr.config import (
    Config,
    KnnConfig,
    apply_overrides,
    config_from_flat,
    load_config,
)
from simclr.data import synthetic_images
from simclr.data.augment import SimCLRAugment
from simclr.evaluate.knn import knn_evaluate
from simclr.plots import plot_metrics, plot_view_pairs
from simclr.train import pretrain

__all__ = ["DEMO_OVERRIDES", "run_demo"]

# Small enough for two CPU cores; everything else is the paper's CIFAR-style default.
DEMO_OVERRIDES = [
    ("data.path", "synthetic"),
    ("data.synthetic_train", "4000"),
    ("data.synthetic_test", "1000"),
    ("model.arch", "resnet18"),
    ("model.width", "0.125"),
    ("train.batch_size", "128"),
    ("train.epochs", "10"),
    ("monitor.knn_every", "5"),
    ("monitor.online_linear", "true"),
]


def run_demo(out: str = "runs/demo", device: str = "auto", epochs: int | None = None, log=print) -> dict:
    """Pretrain on synthetic shapes and report kNN top-1 of the trained and a random encoder (an earlier
    demo in ``out`` is replaced)."""
    cfg = apply_overrides(Config(), DEMO_OVERRIDES + [("train.out", out), ("train.device", device),
                                           ("train.overwrite", "true")])
    if epochs is not None:
        cfg.train.epochs = epochs
    log(f"pretraining {cfg.model.arch} (width {cfg.model.width}) on {cfg.data.synthetic_train} synthetic images -> {out}")
    run = pretrain(cfg, log=log)
    common = {"data.path": "synthetic", "data.val_path": "synthetic:test", "eval.device": device, "eval.out": str(run)}
    trained = knn_evaluate(config_from_flat({**common, "encoder.checkpoint": str(run)}, cls=KnnConfig))
    random = knn_evaluate(config_from_flat({**common, "encoder.random_init": True, "encoder.arch": cfg.model.arch,
                                            "encoder.width": cfg.model.width, "eval.seed": cfg.train.seed,
                                            "eval.out": ""}, cls=KnnConfig))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    plot_metrics(records, run / "metrics.png")
    resolved = load_config(run / "config.yaml")
    sample = synthetic_images(8, seed=1)
    plot_view_pairs(sample.images, SimCLRAugment.from_config(resolved.augment, resolved.data.image_size), run / "views.png")
    res = {
        "trained_top1": trained["top1"],
        "random_init_top1": random["top1"],
        "gain": trained["top1"] - random["top1"],
        "run": str(run),
        "plots": [str(run / "metrics.png"), str(run / "views.png")],
    }
    (Path(run) / "demo.json").write_text(json.dumps(res, indent=2) + "\n")
    log(f"kNN top-1 on held-out synthetic images: trained {res['trained_top1']:.3f}  random init {res['random_init_top1']:.3f}")
    return res


if __name__ == "__main__":  # pragma: no cover
    torch.set_num_threads(torch.get_num_threads())
    print(json.dumps(run_demo()))
