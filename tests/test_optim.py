"""LARS against a hand computation of the official update; schedules; parameter groups."""

import math

import pytest
import torch
from torch import nn

from simclr.optim import LARS, build_optimizer, param_groups, scaled_lr, warmup_cosine, warmup_steps_for


def test_lars_step_matches_hand_computation():
    w = torch.tensor([3.0, 4.0])  # ||w|| = 5
    b = torch.tensor([1.0, -2.0])
    gw = torch.tensor([0.6, -0.8])
    gb = torch.tensor([0.5, 0.5])
    pw, pb = nn.Parameter(w.clone()), nn.Parameter(b.clone())
    lr, wd, eta, mom = 0.7, 0.1, 0.001, 0.9
    opt = LARS([dict(params=[pw], weight_decay=wd), dict(params=[pb], weight_decay=0.0, lars_exclude=True)],
               lr=lr, momentum=mom, weight_decay=wd, eta=eta)
    pw.grad, pb.grad = gw.clone(), gb.clone()
    opt.step()
    # included: g' = g + wd*w = [0.9, -0.4]; trust = eta*5/||g'||; v = lr*trust*g'; w -= v
    g1 = [0.6 + 0.1 * 3.0, -0.8 + 0.1 * 4.0]
    gn = math.sqrt(g1[0] ** 2 + g1[1] ** 2)
    trust = eta * 5.0 / gn
    v = [lr * trust * g1[0], lr * trust * g1[1]]
    assert pw.tolist() == pytest.approx([3.0 - v[0], 4.0 - v[1]], abs=1e-7)
    # excluded: no decay, no trust ratio: v = lr*g
    vb = [lr * 0.5, lr * 0.5]
    assert pb.tolist() == pytest.approx([1.0 - vb[0], -2.0 - vb[1]], abs=1e-7)
    # second step: momentum accumulates lr*trust*g
    w1 = pw.detach().clone()
    pw.grad = gw.clone()
    opt.step()
    g2 = gw + wd * w1
    trust2 = eta * w1.norm() / g2.norm()
    v2 = mom * torch.tensor(v) + lr * trust2 * g2
    torch.testing.assert_close(pw.detach(), w1 - v2, atol=1e-7, rtol=0)


def test_lars_trust_ratio_is_one_for_zero_norms():
    p = nn.Parameter(torch.zeros(3))
    opt = LARS([p], lr=0.5, weight_decay=0.0)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    assert p.tolist() == pytest.approx([-0.5, -1.0, -1.5])
    q = nn.Parameter(torch.ones(2))
    opt = LARS([q], lr=0.5)
    q.grad = torch.zeros(2)
    opt.step()
    assert q.tolist() == [1.0, 1.0]


def test_param_groups_exclude_bn_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model, 1e-6)
    decay, excl = groups
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in excl["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)}
    assert excl["lars_exclude"] and excl["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-6


@pytest.mark.parametrize("name,cls", [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer(name, cls):
    opt = build_optimizer(name, nn.Linear(3, 2), 0.1, 1e-4)
    assert isinstance(opt, cls)


def test_build_optimizer_unknown():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam9", nn.Linear(3, 2), 0.1, 0.0)


def test_lr_scaling():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.5, 1024, "none") == 0.5
    with pytest.raises(ValueError):
        scaled_lr(0.3, 256, "cubic")


def test_warmup_then_cosine():
    total, warm, peak = 100, 10, 2.0
    lrs = [warmup_cosine(s, total, warm, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[9] == pytest.approx(2.0)
    assert lrs[10] == pytest.approx(2.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[55] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert warmup_cosine(total, total, warm, peak) == pytest.approx(0.0)
    assert warmup_cosine(5, 10, 0, 1.0) == pytest.approx(0.5)


def test_warmup_does_not_swallow_short_runs():
    # 10 warmup epochs of an 8-epoch run are capped at 10% of its steps
    assert warmup_steps_for(10, 39, 8 * 39, 0.1) == 31
    assert warmup_steps_for(10, 100, 100 * 100, 0.1) == 1000
    assert warmup_steps_for(0, 100, 1000, 0.1) == 0
