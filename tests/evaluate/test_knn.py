"""Weighted kNN against a brute-force loop reference."""

import math

import torch

from simclr.evaluate.knn import knn_accuracy, knn_predict, topk_accuracy


def knn_loop(query, bank, labels, num_classes, k, t, exclude_self=False):
    out = []
    for i, q in enumerate(query.double()):
        sims = []
        for j, b in enumerate(bank.double()):
            if exclude_self and i == j:
                continue
            sims.append(((q @ b) / (q.norm() * b.norm())).item() if True else 0.0)
            sims[-1] = (sims[-1], j)
        sims.sort(reverse=True)
        scores = [0.0] * num_classes
        for s, j in sims[:k]:
            scores[labels[j]] += math.exp(s / t)
        out.append(scores)
    return torch.tensor(out, dtype=torch.float64)


def test_knn_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(60, 7, generator=g), torch.randn(15, 7, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    ours = knn_predict(query, bank, labels, 4, k=10, temperature=0.1, chunk=4)
    ref = knn_loop(query, bank, labels, 4, 10, 0.1)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def test_leave_one_out_excludes_self():
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(30, 5, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    ours = knn_predict(bank, bank, labels, 3, k=5, temperature=0.5, exclude_self=True)
    ref = knn_loop(bank, bank, labels, 3, 5, 0.5, exclude_self=True)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def test_separable_clusters_are_perfect():
    centers = torch.eye(3) * 5
    labels = torch.arange(3).repeat_interleave(20)
    feats = centers[labels] + 0.1 * torch.randn(60, 3)
    res = knn_accuracy(feats, labels, feats[::3], labels[::3], 3, k=5, temperature=0.1)
    assert res["top1"] == 1.0


def test_topk():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    res = topk_accuracy(scores, torch.tensor([1, 2]), ks=(1, 2))
    assert res == {"top1": 0.5, "top2": 0.5}
