"""Which transformation was applied? The paper's Table 3: how much h and z = g(h) still tell about it.

The paper argues that the projection head lets h keep information that the contrastive loss removes from
z (colour, orientation), and shows it by training classifiers on h and on g(h) to recognise the
transformation an image went through. Here each task takes images, makes one random view of each with the
run's crop (and flip) and colour jitter, then applies the task's transformation with a label drawn per
image, balanced over the task's classes:

- ``color``: grayscale (1) or not (0); chance 50 % (the paper's 80 % is the share of colour views among its
  pretraining views, grayscale having probability 0.2);
- ``rotation``: k quarter turns, k in {0, 1, 2, 3}; chance 25 %;
- ``noise``: Gaussian noise of the run's ``augment.noise_std`` (0.1 when the run has none) or not; chance 50 %;
- ``sobel``: the Sobel view or the image; chance 50 %.

A classifier is fitted on the features of training images and scored on those of test images: the
L-BFGS logistic regression of ``simclr linear --solver lbfgs`` (validation split, grid of L2 strengths,
refit). The paper trained MLPs; a linear probe asks the stricter question of what is linearly readable.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from simclr.config import AugmentConfig
from simclr.data.augment import SimCLRAugment
from simclr.evaluate.features import extract_features
from simclr.evaluate.knn import topk_accuracy
from simclr.evaluate.linear import lbfgs_probe, stratified_split

__all__ = ["TASKS", "predict_transformations"]

# task -> (number of classes, the transformation of augment's view lists, the draw it is labelled by)
TASKS = {
    "color": (2, "gray", "gray_on"),
    "rotation": (4, "rotate", "k"),
    "noise": (2, "noise", "on"),
    "sobel": (2, "sobel", "on"),
}


class _TaskViews:
    """A view maker for ``extract_features``: the run's crop and jitter, then the task's transformation with
    the label of each image. Batches arrive in order, so the labels are consumed in order."""

    def __init__(self, image_size: int, augment: AugmentConfig, task: str, labels: torch.Tensor):
        k, op, self.key = TASKS[task]
        keys = {"view1": f"crop,jitter,{op}", "gray_p": 1.0, "grayscale": True, "rotate_p": 1.0, "sobel_p": 1.0, "noise_p": 1.0}
        if op == "noise" and augment.noise_std == 0:
            keys["noise_std"] = AugmentConfig.noise_std
        self.aug = SimCLRAugment(image_size, dataclasses.replace(augment, **keys))
        self.op, self.labels, self.pos = op, labels, 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.labels[self.pos:self.pos + b].to(x.device)
        self.pos += b
        d = self.aug.draw(b, h, w, x.device, generator, view=1)
        d[f"{self.op}.{self.key}"] = y if self.op == "rotate" else y.bool()
        return self.aug.apply(x, d, view=1)


def _balanced_labels(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    return (torch.arange(n) % k)[torch.randperm(n, generator=g)]


def predict_transformations(encoder: nn.Module, head: nn.Module, train, test, image_size: int, device: torch.device,
                            augment: AugmentConfig | None = None, tasks=tuple(TASKS), max_train: int = 4000,
                            max_test: int = 2000, seed: int = 0, batch_size: int = 512, grid: int = 8,
                            log=lambda *_: None) -> dict:
    """Table 3 for one encoder and head: for each task, top-1 of a probe on h and on z = head(h).

    Args:
        encoder, head: the frozen networks (h: (B, F), z: (B, D)).
        train, test: ImageSets (labels unused): the probe is fitted on views of up to ``max_train`` images of
            ``train`` and scored on views of up to ``max_test`` images of ``test`` (random subsets, ``seed``).
        augment: the run's augmentation (crop convention, colour strength, noise std); default the paper's.
        grid: L2 strengths tried in [1e-6, 1e5] (the probe's validation split is 20 % of the training views).

    Returns:
        {task: {"h": top-1, "z": top-1, "chance": 1 / classes}} (fractions).
    """
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task {bad[0]!r}: expected one of {', '.join(TASKS)}")
    augment = augment or AugmentConfig()
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(train), generator=g)[:max_train].sort().values
    te = torch.randperm(len(test), generator=g)[:max_test].sort().values
    lambdas = np.logspace(-6.0, 5.0, grid)
    out = {}
    for task in tasks:
        k = TASKS[task][0]
        feats = {}
        for name, ds, idx in (("train", train, tr), ("test", test, te)):
            y = _balanced_labels(len(idx), k, g)
            views = _TaskViews(image_size, augment, task, y)
            g_views = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            feats[name] = (*extract_features(encoder, ds, image_size, device, batch_size, head=head, indices=idx,
                                             augment=views, generator=g_views), y)
        (htr, ztr, ytr), (hte, zte, yte) = feats["train"], feats["test"]
        split = stratified_split(ytr, 0.2, seed)
        res = {"chance": 1.0 / k}
        for rep, ftr, fte in (("h", htr, hte), ("z", ztr, zte)):
            probe = lbfgs_probe(ftr, ytr, fte, k, lambdas, split, device=device, log=lambda *_: None)
            res[rep] = topk_accuracy(probe["scores"], yte, ks=(1,))["top1"]
        log(f"{task}: h {res['h']:.4f}  z {res['z']:.4f}  (chance {res['chance']:.2f})")
        out[task] = res
    return out
