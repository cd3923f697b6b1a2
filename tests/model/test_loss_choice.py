"""The loss chosen by config (``loss.name``, ``loss.semi_hard``, ``loss.l2_normalize``, ``loss.margin``): what
SimCLR minimises and reports, in its plain forward, its gathered form and the gradient-cached step."""

import copy

import pytest
import torch
from conftest import simclr_model

from simclr.model import SimCLR
from simclr.model.losses import (
    margin_triplet_with_accuracy,
    nt_logistic_with_accuracy,
    nt_xent_with_accuracy,
)
from simclr.train.step import cached_backward

SETTINGS = [  # (loss.name, loss.semi_hard, loss.l2_normalize)
    ("nt_xent", False, True),
    ("nt_xent", False, False),
    ("nt_logistic", False, True),
    ("nt_logistic", True, True),
    ("nt_logistic", False, False),
    ("margin_triplet", False, True),
    ("margin_triplet", True, True),
    ("margin_triplet", True, False),
]
IDS = [f"{n}{'-sh' if sh else ''}{'' if l2 else '-nol2'}" for n, sh, l2 in SETTINGS]


def _expected(m, z1, z2, **gathered):
    """The loss function the model's settings name, called directly."""
    if m.loss_name == "nt_logistic":
        return nt_logistic_with_accuracy(z1, z2, m.temperature, semi_hard=m.semi_hard, l2_normalize=m.l2_normalize,
                                         **gathered)
    if m.loss_name == "margin_triplet":
        return margin_triplet_with_accuracy(z1, z2, m.margin, semi_hard=m.semi_hard, l2_normalize=m.l2_normalize,
                                            **gathered)
    return nt_xent_with_accuracy(z1, z2, m.temperature, l2_normalize=m.l2_normalize, **gathered)


@pytest.mark.parametrize("name,semi_hard,l2", SETTINGS, ids=IDS)
def test_from_config_trains_one_step_with_the_chosen_loss(name, semi_hard, l2):
    torch.manual_seed(0)
    m = simclr_model(num_classes=5, loss_name=name, loss_semi_hard=semi_hard, loss_l2_normalize=l2, loss_margin=0.3)
    assert (m.loss_name, m.semi_hard, m.l2_normalize, m.margin) == (name, semi_hard, l2, 0.3)
    g = torch.Generator().manual_seed(0)
    x1, x2, y = torch.rand(8, 3, 16, 16, generator=g), torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
    before = copy.deepcopy(m.state_dict())
    out = m(x1, x2, y)
    # the metric is the chosen loss's value on the model's projections; objective_scale (official: 2) applies to it
    with torch.no_grad():
        _, z = m.embed(x1, x2)
        loss, acc = _expected(m, z[:8], z[8:])
    assert out["contrastive_loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert out["contrastive_acc"].item() == pytest.approx(acc.item())
    assert out["loss"].item() == pytest.approx(2 * out["contrastive_loss"].item() + out["online_loss"].item(), rel=1e-6)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.head.parameters().__next__().grad.abs().sum() > 0  # the contrastive loss reaches the head
    opt.step()
    assert all(torch.isfinite(v).all() for v in m.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(torch.isfinite(v).all() for v in m(x1, x2, y).values())


def test_paper_objective_scales_every_loss_by_one():
    m = simclr_model(loss_name="margin_triplet", loss_objective="paper")
    out = m(torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16))
    assert m.objective_scale == 1.0 and out["loss"].item() == pytest.approx(out["contrastive_loss"].item())


@pytest.mark.parametrize("name,semi_hard,l2", SETTINGS, ids=IDS)
def test_contrastive_with_gathered_negatives_dispatches_the_same_loss(name, semi_hard, l2):
    """``contrastive(z1, z2, gather, rank)`` passes the gathered batch and the rank's offset to the chosen loss."""
    m = simclr_model(loss_name=name, loss_semi_hard=semi_hard, loss_l2_normalize=l2)
    g = torch.Generator().manual_seed(1)
    z1_all, z2_all = torch.randn(12, 32, generator=g), torch.randn(12, 32, generator=g)
    differences = []
    for rank in range(3):
        z1, z2 = z1_all[4 * rank : 4 * rank + 4], z2_all[4 * rank : 4 * rank + 4]
        gathered = {id(z1): z1_all, id(z2): z2_all}  # what every device's projections gathered would be
        loss, acc = m.contrastive(z1, z2, lambda z, g=gathered: g[id(z)], rank)
        ref, ref_acc = _expected(m, z1, z2, z1_all=z1_all, z2_all=z2_all, offset=4 * rank)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6) and acc.item() == pytest.approx(ref_acc.item())
        differences.append(abs(loss.item() - m.contrastive(z1, z2)[0].item()))
    # and differs from the local-only loss: the gathered negatives were used
    assert max(differences) > 1e-4


def test_positional_constructor_keeps_nt_xent():
    """``SimCLR(encoder, head, temperature, num_classes, objective_scale)`` (as tests/train/test_faults.py builds
    it) is the NT-Xent model with cosine similarities."""
    ref = simclr_model(num_classes=3)
    m = SimCLR(ref.encoder, ref.head, 0.5, 3, 2.0)
    assert (m.loss_name, m.l2_normalize, m.semi_hard) == ("nt_xent", True, False)
    z1, z2 = torch.randn(4, 32), torch.randn(4, 32)
    assert m.contrastive(z1, z2)[0].item() == nt_xent_with_accuracy(z1, z2, 0.5)[0].item()


def test_bad_loss_settings():
    ref = simclr_model()
    with pytest.raises(ValueError, match="unknown loss"):
        SimCLR(ref.encoder, ref.head, 0.5, loss_name="info_nce")
    with pytest.raises(ValueError, match="semi-hard"):
        SimCLR(ref.encoder, ref.head, 0.5, loss_name="nt_xent", semi_hard=True)
    with pytest.raises(ValueError, match="semi-hard"):
        simclr_model(loss_semi_hard=True)


@pytest.mark.parametrize("name,semi_hard", [("nt_logistic", True), ("margin_triplet", False)])
def test_gradient_cached_step_follows_the_loss(name, semi_hard):
    """``cached_backward`` goes through ``SimCLR.contrastive``: with the chosen loss its gradients equal the plain
    step's (no batch statistics, float64)."""
    def model():
        torch.manual_seed(0)
        m = simclr_model(loss_temperature=0.2, num_classes=5, loss_name=name, loss_semi_hard=semi_hard).double()
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
        return m

    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64), torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    a, b = model(), model()
    out_a = a(x1, x2, y)
    out_a["loss"].backward()
    out_b = cached_backward(b, x1, x2, y, 4)
    assert out_b["contrastive_loss"].item() == pytest.approx(out_a["contrastive_loss"].item(), abs=1e-10)
    with torch.no_grad():
        _, z = a.embed(x1, x2)
    assert out_a["contrastive_loss"].item() == pytest.approx(_expected(a, z[:8], z[8:])[0].item(), abs=1e-10)
    for (pname, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-8, rtol=0, msg=pname)


# every setting but the default (tests/train/test_step.py) under bf16 autocast, two in float32
GRAPHS = [(*s, "bf16") for s in SETTINGS[1:]] + [("nt_logistic", True, True, "fp32"), ("margin_triplet", False, True, "fp32")]


@pytest.mark.slow  # keeps `pytest -m "not slow"` under 90 s; still in make test
@pytest.mark.parametrize("name,semi_hard,l2,precision", GRAPHS, ids=[f"{n}-sh{sh:d}-l2{l2:d}-{p}" for n, sh, l2, p in GRAPHS])
def test_the_compiled_forward_is_one_graph_with_each_loss(name, semi_hard, l2, precision):
    """As tests/train/test_step.py's test for NT-Xent: the whole forward traces as one graph, no break."""
    m = simclr_model(num_classes=5, loss_name=name, loss_semi_hard=semi_hard, loss_l2_normalize=l2)
    g = torch.Generator().manual_seed(0)
    x1, x2, y = torch.rand(8, 3, 16, 16, generator=g), torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        ex = torch._dynamo.explain(m)(x1, x2, y)
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [str(r.reason) for r in ex.break_reasons]
