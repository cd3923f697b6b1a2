"""Evaluation of representations: feature extraction and weighted kNN.

kNN follows Wu et al. (2018), the usual self-supervised monitor: cosine similarity between
L2-normalised h, the k nearest training images vote with weight exp(sim / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simclr.augment import center_resize

__all__ = ["extract_features", "knn_predict", "knn_accuracy", "topk_accuracy"]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images_fn,
    n: int,
    image_size: int,
    device: torch.device,
    batch_size: int = 512,
    channels_last: bool = True,
    progress=None,
) -> torch.Tensor:
    """h for n images, computed in eval mode from centre views: (n, num_features) float32 on CPU.

    ``images_fn(idx)`` returns uint8 images (len(idx), 3, H, W) for an index tensor.
    """
    was_training = encoder.training
    encoder.eval()
    feats = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        x = center_resize(images_fn(idx).to(device, non_blocking=True), image_size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats.append(encoder(x).float().cpu())
        if progress is not None:
            progress(len(idx))
    encoder.train(was_training)
    return torch.cat(feats)


def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    exclude_self: bool = False,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores of a weighted kNN classifier.

    Args:
        query: (Q, d) features; bank: (N, d) features with labels (N,) in [0, num_classes).
        k: neighbours (clipped to the bank size); temperature: weight exp(cos / T).
        exclude_self: query i is bank row i (leave-one-out on the training set).

    Returns:
        (Q, num_classes) scores; argmax is the prediction.
    """
    if query.shape[1] != bank.shape[1]:
        raise ValueError(f"query and bank dims differ: {query.shape[1]} vs {bank.shape[1]}")
    q = F.normalize(query.float(), dim=1)
    b = F.normalize(bank.float(), dim=1)
    k = min(k, b.shape[0] - (1 if exclude_self else 0))
    out = []
    for start in range(0, q.shape[0], chunk):
        sim = q[start : start + chunk] @ b.t()
        if exclude_self:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + start] = -float("inf")
        top, idx = sim.topk(k, dim=1)
        w = (top / temperature).exp()
        scores = torch.zeros(sim.shape[0], num_classes, dtype=w.dtype)
        scores.scatter_add_(1, bank_labels[idx], w)
        out.append(scores)
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """{'top1': ..., 'top5': ...} fractions from (Q, C) scores and (Q,) labels."""
    res = {}
    for k in ks:
        k_eff = min(k, scores.shape[1])
        hit = (scores.topk(k_eff, dim=1).indices == labels.view(-1, 1)).any(1)
        res[f"top{k}"] = hit.float().mean().item()
    return res


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor | None,
    test_labels: torch.Tensor | None,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
) -> dict[str, float]:
    """Top-1/top-5 kNN accuracy; with no test set, leave-one-out on the training set."""
    if test_feats is None:
        scores = knn_predict(train_feats, train_feats, train_labels, num_classes, k, temperature, exclude_self=True)
        return topk_accuracy(scores, train_labels)
    scores = knn_predict(test_feats, train_feats, train_labels, num_classes, k, temperature)
    return topk_accuracy(scores, test_labels)


def encoder_for(checkpoint: str | None, arch: str, width: float, image_size: int, data_side: int, seed: int = 0):
    """The encoder to evaluate and its input size.

    ``checkpoint`` (a run folder or checkpoint.pt) gives the pretrained encoder at its training size
    (or ``image_size`` when given); ``None`` gives a randomly initialised ``arch``/``width`` seeded
    with ``seed`` (the baseline), at ``image_size`` or the data's side, with the CIFAR stem at 32px or less.
    Returns (encoder in eval mode, image size, metadata dict).
    """
    from simclr.checkpoint import load_pretrained_encoder
    from simclr.models import build_encoder

    if checkpoint:
        encoder, meta = load_pretrained_encoder(checkpoint)
        return encoder, image_size or meta["image_size"], meta
    size = image_size or data_side
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    encoder = build_encoder(arch, width=width, cifar_stem=size <= 32)
    torch.random.set_rng_state(gen_state)
    meta = {"arch": arch, "width": width, "cifar_stem": size <= 32, "image_size": size, "epoch": 0}
    return encoder.eval(), size, meta


def load_labelled(spec: str, image_size: int, data_dir: str = "", max_per_class: int = 0):
    """A labelled dataset (DataError when its images have no labels)."""
    from simclr.data import DataError, load_dataset

    ds = load_dataset(spec, image_size, data_dir, max_per_class)
    if not ds.has_labels:
        raise DataError(f"{spec} has no labels: evaluation needs a folder with one subfolder per class")
    return ds


def check_same_classes(train, test) -> None:
    from simclr.data import DataError

    if train.classes != test.classes:
        raise DataError(f"train and test classes differ: {train.classes[:5]}... vs {test.classes[:5]}...")


def write_result(run: str | None, name: str, res: dict) -> None:
    """Save an evaluation result as RUN/name.json when ``run`` is a run folder."""
    import json
    from pathlib import Path

    if run and Path(run).is_dir():
        (Path(run) / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")


def knn_evaluate(
    checkpoint: str | None,
    train_spec: str,
    test_spec: str,
    arch: str = "resnet18",
    width: float = 1.0,
    k: int = 200,
    temperature: float = 0.1,
    image_size: int = 0,
    max_per_class: int = 0,
    data_dir: str = "",
    batch_size: int = 512,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    """kNN top-1/top-5 of a pretrained encoder (``checkpoint``: a run folder) or, with
    ``checkpoint=None``, of a randomly initialised ``arch``/``width`` (seeded) as the baseline.

    Writes knn.json into the run folder when evaluating a checkpoint.
    """
    from simclr.engine import pick_device

    dev = pick_device(device)
    encoder, size = None, image_size
    if checkpoint:  # the checkpoint fixes the input size before the data is loaded
        encoder, size, _ = encoder_for(checkpoint, arch, width, image_size, 0, seed)
    train = load_labelled(train_spec, size, data_dir, max_per_class)
    test = load_labelled(test_spec, size or train.side, data_dir, max_per_class)
    check_same_classes(train, test)
    if encoder is None:
        encoder, size, _ = encoder_for(None, arch, width, image_size, train.side, seed)
    encoder = encoder.to(dev).to(memory_format=torch.channels_last)
    ftr = extract_features(encoder, train.get, len(train), size, dev, batch_size)
    fte = extract_features(encoder, test.get, len(test), size, dev, batch_size)
    res = knn_accuracy(ftr, train.labels, fte, test.labels, len(train.classes), k, temperature)
    res.update(k=k, temperature=temperature, num_train=len(train), num_test=len(test), image_size=size,
               encoder="random-init" if not checkpoint else str(checkpoint))
    write_result(checkpoint, "knn", res)
    return res
