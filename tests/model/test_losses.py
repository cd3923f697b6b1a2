"""NT-Xent against a float64 loop transcription of the paper's Algorithm 1."""

import math

import pytest
import torch

from simclr.model.losses import contrastive_logits, nt_xent, nt_xent_with_accuracy


def algorithm1(z1: torch.Tensor, z2: torch.Tensor, tau: float, l2: bool = True) -> torch.Tensor:
    """Algorithm 1 of Chen et al. (2020), written as loops: z_{2k-1}, z_{2k} are the two views of image k.
    ``l2=False``: sim is the raw dot product (the paper's Table 5 "no l2" rows)."""
    n = z1.shape[0]
    z = []
    for k in range(n):
        z += [z1[k], z2[k]]

    def sim(u, v):
        return (u @ v) / (u.norm() * v.norm()) if l2 else u @ v

    def ell(i, j):
        num = torch.exp(sim(z[i], z[j]) / tau)
        den = sum(torch.exp(sim(z[i], z[m]) / tau) for m in range(2 * n) if m != i)
        return -torch.log(num / den)

    total = 0.0
    for k in range(n):
        total = total + ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k)
    return total / (2 * n)


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0), (13, 4, 0.07), (4, 128, 0.2)])
def test_matches_algorithm1_values_and_gradients(n, d, tau):
    g = torch.Generator().manual_seed(n * 100 + d)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    # ours in float32, the training dtype; the reference in float64
    a1, b1 = a.float().requires_grad_(), b.float().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours = nt_xent(a1, b1, tau)
    ref = algorithm1(a2, b2, tau)
    ours.backward()
    ref.backward()
    assert ours.dtype == torch.float32
    assert abs(ours.item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item()))
    torch.testing.assert_close(a1.grad.double(), a2.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(b1.grad.double(), b2.grad, atol=1e-6, rtol=0)
    # and in float64 it agrees to rounding
    assert abs(nt_xent(a, b, tau).item() - ref.item()) < 1e-12 * max(1.0, abs(ref.item()))


@pytest.mark.parametrize("n,d,tau", [(2, 3, 0.5), (5, 8, 0.1), (8, 16, 1.0), (4, 128, 0.2)])
def test_without_l2_normalisation_matches_algorithm1_with_dot_products(n, d, tau):
    """Table 5's "no l2" rows: logits are raw dot products / tau (inputs scaled so they are O(1))."""
    g = torch.Generator().manual_seed(n * 100 + d + 1)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * d**-0.5
    b = torch.randn(n, d, generator=g, dtype=torch.float64) * d**-0.5
    a1, b1 = a.float().requires_grad_(), b.float().requires_grad_()
    a2, b2 = a.clone().requires_grad_(), b.clone().requires_grad_()
    ours = nt_xent(a1, b1, tau, l2_normalize=False)
    ref = algorithm1(a2, b2, tau, l2=False)
    ours.backward()
    ref.backward()
    assert abs(ours.item() - ref.item()) < 1e-6 * max(1.0, abs(ref.item()))
    torch.testing.assert_close(a1.grad.double(), a2.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(b1.grad.double(), b2.grad, atol=1e-6, rtol=0)
    assert abs(nt_xent(a, b, tau, l2_normalize=False).item() - ref.item()) < 1e-12 * max(1.0, abs(ref.item()))
    # and it is not the cosine loss
    assert abs(nt_xent(a, b, tau).item() - ref.item()) > 1e-3


def test_perfect_alignment_gives_low_loss_and_full_accuracy():
    z = torch.eye(4) * 10
    loss, acc = nt_xent_with_accuracy(z, z.clone(), 0.05)
    assert acc.item() == 1.0
    assert loss.item() < 1e-3


def test_uniform_embeddings_give_log_2n_minus_1():
    z = torch.ones(6, 3)
    loss = nt_xent(z, z.clone(), 0.5)
    assert math.isclose(loss.item(), math.log(2 * 6 - 1), rel_tol=1e-5)


def test_gathered_negatives_equal_full_batch():
    """Anchors of two 'devices' scored against the global batch give the full batch's loss and gradients."""
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(8, 5, generator=g, dtype=torch.float64, requires_grad=True)
    full = nt_xent(z1, z2, 0.3)
    (gf1, gf2) = torch.autograd.grad(full, (z1, z2))
    parts = [nt_xent(z1[r * 4 : (r + 1) * 4], z2[r * 4 : (r + 1) * 4], 0.3, z1, z2, offset=r * 4) for r in range(2)]
    split = sum(parts) / 2
    (gs1, gs2) = torch.autograd.grad(split, (z1, z2))
    assert abs(full.item() - split.item()) < 1e-6
    torch.testing.assert_close(gf1, gs1, atol=1e-6, rtol=0)
    torch.testing.assert_close(gf2, gs2, atol=1e-6, rtol=0)


def test_logits_layout():
    z1, z2 = torch.randn(3, 4), torch.randn(3, 4)
    logits, labels = contrastive_logits(z1, z2, 0.5)
    assert logits.shape == (6, 6)
    assert labels.tolist() == [3, 4, 5, 0, 1, 2]
    assert (logits.diagonal() < -1e8).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent(torch.randn(2, 3), torch.randn(3, 3), 0.5)


def test_accuracy_is_the_argmax_accuracy_without_ties():
    """contrastive_accuracy (positive >= row max, a formulation Triton compiles) equals the brute-force
    fraction of rows whose argmax is the positive, local and with gathered negatives."""
    from simclr.model.losses import contrastive_accuracy

    g = torch.Generator().manual_seed(3)
    for n, m, offset in ((6, 6, 0), (5, 15, 5), (40, 40, 0)):
        z_all1, z_all2 = torch.randn(m, 8, generator=g), torch.randn(m, 8, generator=g)
        z1, z2 = z_all1[offset : offset + n] + 0.3 * torch.randn(n, 8, generator=g), z_all2[offset : offset + n]
        z_all1 = z_all1.clone()
        z_all1[offset : offset + n] = z1
        logits, labels = contrastive_logits(z1, z2, 0.5, z_all1, z_all2, offset)
        brute = sum(int(logits[i].argmax()) == int(labels[i]) for i in range(2 * n)) / (2 * n)
        assert 0 < brute < 1 or n == 40
        assert contrastive_accuracy(logits, labels).item() == pytest.approx(brute, abs=1e-7)
        _, acc = nt_xent_with_accuracy(z1, z2, 0.5, z_all1, z_all2, offset)
        assert acc.item() == pytest.approx(brute, abs=1e-7)
