"""The SimCLR model: outputs, and that optimising it on fixed views drives NT-Xent down."""

import pytest
import torch

from simclr.data.augment import SimCLRAugment
from conftest import simclr_model
from simclr.data import synthetic_images
from simclr.optim import build_optimizer


def test_outputs():
    m = simclr_model(loss_temperature=0.5, num_classes=10)
    x = torch.rand(8, 3, 16, 16)
    out = m(x, x.flip(-1), torch.randint(0, 10, (8,)))
    assert set(out) == {"loss", "contrastive_loss", "contrastive_acc", "online_loss", "online_acc"}
    # the official objective (the default) minimises 2L; contrastive_loss reports the paper's L
    assert m.objective_scale == 2.0
    assert out["loss"].requires_grad
    assert out["loss"].item() == pytest.approx((2 * out["contrastive_loss"] + out["online_loss"]).item(), rel=1e-6)
    paper = simclr_model(loss_temperature=0.5, num_classes=10, loss_objective="paper")
    paper.load_state_dict(m.state_dict())
    out_p = paper(x, x.flip(-1), torch.randint(0, 10, (8,)))
    assert out_p["contrastive_loss"].item() == pytest.approx(out["contrastive_loss"].item(), rel=1e-6)
    assert "online_loss" not in simclr_model()(x, x)


@pytest.mark.slow  # keeps `pytest -m "not slow"` under 90 s; still in make test
@pytest.mark.parametrize("name,lr", [("lars", 0.25), ("sgd", 0.05), ("adamw", 1e-3)])
def test_optimising_fixed_views_lowers_the_loss(name, lr):
    torch.manual_seed(0)
    ds = synthetic_images(48, seed=1, size=32)
    g = torch.Generator().manual_seed(0)
    aug = SimCLRAugment(32)
    v1, v2 = aug(ds.images, g), aug(ds.images, g)
    m = simclr_model(head_out_dim=64, loss_temperature=0.2)
    opt = build_optimizer(name, m, lr, 1e-4)
    losses = []
    for _ in range(20):
        out = m(v1, v2)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses
