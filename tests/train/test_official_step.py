"""One training step with the official objective equals a float64 transcription of the official code.

References transcribed here, not imported: tf2/objective.py ``add_contrastive_loss`` (loss_a + loss_b,
LARGE_NUM masking, softmax cross-entropy against one-hot labels over [ab, aa]) and tf2/lars_optimizer.py
``_resource_apply_dense`` with classic momentum (weight decay added to the gradient, trust ratio
eta ||w|| / ||g||, both skipped for 'batch_normalization' and 'bias' variables).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import simclr_model

from simclr.optim import build_optimizer
from simclr.train.step import plain_backward

LARGE_NUM = 1e9


def official_objective(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """tf2/objective.py add_contrastive_loss, written out (hidden_norm=True, one replica)."""
    h1, h2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = h1.shape[0]
    labels = F.one_hot(torch.arange(n), 2 * n).to(h1.dtype)
    masks = F.one_hot(torch.arange(n), n).to(h1.dtype)
    logits_aa = h1 @ h1.t() / temperature - masks * LARGE_NUM
    logits_bb = h2 @ h2.t() / temperature - masks * LARGE_NUM
    logits_ab = h1 @ h2.t() / temperature
    logits_ba = h2 @ h1.t() / temperature

    def softmax_cross_entropy(onehot, logits):  # tf.nn.softmax_cross_entropy_with_logits, then the mean
        return -(onehot * torch.log_softmax(logits, 1)).sum(1).mean()

    loss_a = softmax_cross_entropy(labels, torch.cat((logits_ab, logits_aa), 1))
    loss_b = softmax_cross_entropy(labels, torch.cat((logits_ba, logits_bb), 1))
    return loss_a + loss_b


def official_lars_step(named_params, grads, velocities, lr, weight_decay, momentum=0.9, eeta=0.001, bn_names=()):
    """tf2/lars_optimizer.py, classic momentum, no Nesterov; updates params and velocities in place."""
    for name, p in named_params:
        g = grads[name].clone()
        excluded = name in bn_names or name.endswith("bias")  # 'batch_normalization' and 'bias' variables
        if not excluded:
            g = g + weight_decay * p
        trust_ratio = 1.0
        if not excluded:
            w_norm, g_norm = torch.linalg.norm(p), torch.linalg.norm(g)
            trust_ratio = torch.where(w_norm > 0, torch.where(g_norm > 0, eeta * w_norm / g_norm, 1.0), 1.0)
        scaled_lr = lr * trust_ratio
        next_v = momentum * velocities[name] + scaled_lr * g
        velocities[name] = next_v
        p -= next_v


@pytest.mark.parametrize("weight_decay", [1e-6, 1e-4])
def test_two_steps_equal_the_official_code(weight_decay):
    torch.manual_seed(0)
    model = simclr_model(loss_temperature=0.5).double()  # loss.objective: official is the default
    ref, initial = copy.deepcopy(model), copy.deepcopy(model)
    opt = build_optimizer("lars", torch.nn.ModuleList([model.encoder, model.head]), 0.6, weight_decay, 0.9, 0.001)
    bn_names = {f"{m}.{k}" for m, mod in ref.named_modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
                for k, _ in mod.named_parameters(recurse=False)}
    params = dict(ref.named_parameters())
    velocities = {k: torch.zeros_like(p) for k, p in params.items()}
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        v1, v2 = torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64), torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64)
        # ours: the trainer's backward and optimiser
        opt.zero_grad(set_to_none=True)
        out = plain_backward(model, v1, v2, None, autocast=torch.autocast("cpu", enabled=False), scale=lambda t: t)
        opt.step()
        # official: its objective through the same network, its LARS update
        ref.zero_grad(set_to_none=True)
        _, z = ref.embed(v1, v2)
        loss = official_objective(z[:8], z[8:], 0.5)
        loss.backward()
        assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-12)  # what is minimised: 2L
        assert out["contrastive_loss"].item() == pytest.approx(loss.item() / 2, rel=1e-12)  # what is reported: L
        grads = {k: p.grad for k, p in params.items() if p.grad is not None}
        with torch.no_grad():
            official_lars_step([(k, params[k]) for k in grads], grads, velocities, 0.6, weight_decay, bn_names=bn_names)
        for (k, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=k)
    # and the step moved the network: a comparison of two unchanged copies would prove nothing
    assert any((p - q).abs().max() > 1e-4 for p, q in zip(model.parameters(), initial.parameters()))


def test_paper_objective_halves_the_step_of_bn_and_bias():
    """With loss.objective paper, gradients are half the official ones (the trust ratio hides it, BN/bias do not)."""
    torch.manual_seed(0)
    official = simclr_model(loss_temperature=0.5).double()
    paper = simclr_model(loss_temperature=0.5, loss_objective="paper").double()
    paper.load_state_dict(official.state_dict())
    v1, v2 = torch.rand(8, 3, 16, 16, dtype=torch.float64), torch.rand(8, 3, 16, 16, dtype=torch.float64)
    for m in (official, paper):
        plain_backward(m, v1, v2, None, autocast=torch.autocast("cpu", enabled=False), scale=lambda t: t)
    for p, q in zip(official.parameters(), paper.parameters()):
        torch.testing.assert_close(p.grad, 2 * q.grad, rtol=1e-12, atol=0)
