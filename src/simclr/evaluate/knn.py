"""Weighted kNN classification of representations, and top-k accuracy.

kNN follows Wu et al. (2018), the usual self-supervised monitor: cosine similarity between
L2-normalised h, the k nearest training images vote with weight exp(sim / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simclr.config import KNN_K, KNN_TEMPERATURE
from simclr.evaluate.inputs import prepare, write_result

__all__ = ["knn_predict", "knn_accuracy", "topk_accuracy", "knn_evaluate", "knn_result"]

_EXP_SAFE = 80.0  # exp(x) stays finite in float32 up to about 88


def knn_predict(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    exclude_self: bool = False,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores of a weighted kNN classifier.

    Args:
        query: (Q, d) features; bank: (N, d) features with labels (N,) in [0, num_classes).
        k: neighbours (clipped to the bank size); temperature: weight exp(cos / T).
        exclude_self: query i is bank row i (leave-one-out on the training set).

    Returns:
        (Q, num_classes) scores; argmax is the prediction. With a temperature so small that exp(cos / T)
        overflows, each query's weights are divided by its largest, exp((cos - max cos) / T): the same
        ranking, finite scores.
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
        logits = top / temperature
        if logits.numel() and logits.max() > _EXP_SAFE:  # exp would overflow to inf: scale each query's weights
            logits = logits - logits[:, :1]
        w = logits.exp()
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
    k: int,
    temperature: float,
) -> dict[str, float]:
    """Top-1/top-5 kNN accuracy; with no test set, leave-one-out on the training set."""
    if test_feats is None:
        scores = knn_predict(train_feats, train_feats, train_labels, num_classes, k, temperature, exclude_self=True)
        return topk_accuracy(scores, train_labels)
    scores = knn_predict(test_feats, train_feats, train_labels, num_classes, k, temperature)
    return topk_accuracy(scores, test_labels)


def knn_evaluate(cfg, log=print) -> dict:
    """``simclr knn``: kNN top-1/top-5 of a pretrained encoder or, with ``encoder.random_init``, of a seeded
    random one (the baseline), from a ``simclr.config.KnnConfig``. Writes knn.json into eval.out, or
    into the run folder when evaluating a checkpoint (checked before any work). A k larger than the
    training set uses every training image (``k_used``)."""
    inp = prepare(cfg, labelled=True, with_test=True, out=lambda run: cfg.eval.out or run, log=log)
    ftr, fte = inp.features(batch_size=cfg.eval.batch_size)
    return knn_result(inp, ftr, fte, cfg.knn.k, cfg.knn.temperature)


def knn_result(inp, ftr: torch.Tensor, fte: torch.Tensor, k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> dict:
    """``simclr knn``'s result from the features of ``inp`` (``simclr.evaluate.inputs.EvalInputs``) already extracted,
    ftr (N_train, D) and fte (N_test, D); written to knn.json in ``inp.out``."""
    res = knn_accuracy(ftr, inp.data.labels, fte, inp.test.labels, len(inp.data.classes), k, temperature)
    res.update(k=k, k_used=min(k, len(inp.data)), temperature=temperature, num_train=len(inp.data),
               num_test=len(inp.test), image_size=inp.image_size, encoder=inp.name)
    write_result(inp.out, "knn", res)
    return res
