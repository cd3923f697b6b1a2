"""NT-Xent's gradient on the hardest negatives and its softmax entropy, against autograd and brute force."""

import math

import pytest
import torch
import torch.nn.functional as F

from simclr.evaluate.hardness import negative_gradient_share, share_at, softmax_entropy


def _brute(z1, z2, tau, l2):
    """Per anchor, |d loss_a / d s(a, k)| for every negative k from autograd on a float64 loop over anchors; then
    sorted by similarity (hardest first), cumulated and averaged over anchors."""
    n = z1.shape[0]
    z = torch.cat((z1, z2)).double()
    if l2:
        z = F.normalize(z, dim=1)
    curves = []
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        others = [k for k in range(2 * n) if k != a]
        s = torch.stack([z[a] @ z[k] for k in others]).detach().requires_grad_()
        loss = -torch.log_softmax(s / tau, 0)[others.index(pos)]
        loss.backward()
        neg = [i for i, k in enumerate(others) if k != pos]
        g, sim = s.grad[neg].abs(), s.detach()[neg]
        g = g[sim.argsort(descending=True)]
        curves.append(g.cumsum(0) / g.sum())
    return torch.stack(curves).mean(0)


@pytest.mark.parametrize("n,d,tau,l2", [(3, 4, 0.1, True), (5, 8, 0.5, True), (4, 3, 1.0, True), (4, 6, 10.0, False)])
def test_share_equals_autograd_gradients(n, d, tau, l2):
    g = torch.Generator().manual_seed(n * 7 + d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    got = negative_gradient_share(z1, z2, tau, l2)
    assert got.shape == (2 * n - 2,)
    torch.testing.assert_close(got, _brute(z1, z2, tau, l2), rtol=1e-9, atol=1e-12)
    assert got[-1].item() == pytest.approx(1.0)


def test_a_lower_temperature_puts_more_gradient_on_the_hardest_negatives():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(64, 16, generator=g)
    z2 = z1 + 0.5 * torch.randn(64, 16, generator=g)
    shares = [share_at(negative_gradient_share(z1, z2, t), 0.05) for t in (0.05, 0.1, 0.5, 1.0)]
    assert shares == sorted(shares, reverse=True) and shares[0] > 2 * shares[-1]
    assert shares[-1] > 0.05  # even tau 1 weighs the hardest 5% above their count


def test_entropy_equals_brute_force_and_its_bounds():
    g = torch.Generator().manual_seed(1)
    n, tau = 6, 0.3
    z1, z2 = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    z = F.normalize(torch.cat((z1, z2)).double(), dim=1)
    ent = []
    for a in range(2 * n):
        s = torch.stack([z[a] @ z[k] for k in range(2 * n) if k != a]) / tau
        p = s.softmax(0)
        ent.append(-(p * p.log()).sum())
    assert softmax_entropy(z1, z2, tau) == pytest.approx(float(torch.stack(ent).mean()), rel=1e-12)
    # uniform similarities: the maximum, ln(2n - 1)
    same = torch.ones(n, 5)
    assert softmax_entropy(same, same, tau) == pytest.approx(math.log(2 * n - 1))


def test_share_at_picks_at_least_one_negative():
    curve = torch.tensor([0.5, 0.8, 1.0], dtype=torch.float64)
    assert share_at(curve, 0.01) == 0.5 and share_at(curve, 0.5) == 0.8 and share_at(curve, 1.0) == 1.0


def test_hardness_of_run_uses_the_runs_temperature_and_views(tiny_run, monkeypatch):
    """The curve is negative_gradient_share of the run's own projections at the run's tau (0.1 by default here),
    not at another tau; the figures are the curve's."""
    import simclr.evaluate.hardness as hardness
    from simclr.config import DataConfig
    from simclr.data import load_dataset

    seen = {}
    real = hardness.negative_gradient_share

    def spy(z1, z2, temperature, l2_normalize=True):
        seen.update(z1=z1, z2=z2, tau=temperature, l2=l2_normalize)
        return real(z1, z2, temperature, l2_normalize)

    monkeypatch.setattr(hardness, "negative_gradient_share", spy)
    data = load_dataset("synthetic", DataConfig(synthetic_train=96, image_size=16))
    res = hardness.hardness_of_run(tiny_run, data, batch_size=16)
    assert (seen["tau"], seen["l2"]) == (0.1, True) and seen["z1"].shape == (16, 128)
    assert not torch.equal(seen["z1"], seen["z2"])  # two different views
    assert res["curve"] == real(seen["z1"], seen["z2"], 0.1).tolist()
    assert res["curve"] != real(seen["z1"], seen["z2"], 1.0).tolist()
    assert res["hard_share_10pct"] == res["curve"][2]  # ceil(0.1 x 30) = 3 hardest
    assert res["entropy"] == pytest.approx(softmax_entropy(seen["z1"], seen["z2"], 0.1))
    assert res["batch"] == 16 and len(res["curve"]) == 30 and res["max_entropy"] == pytest.approx(math.log(31))
    again = hardness.hardness_of_run(tiny_run, data, batch_size=16)
    assert again["curve"] == res["curve"]  # seeded
