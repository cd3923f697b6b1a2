"""Optimisers and learning-rate schedules.

LARS follows the official SimCLR implementation (lars_optimizer.py):

    g  <- g + weight_decay * w
    r  <- eta * ||w|| / ||g||        (1 when either norm is 0)
    v  <- momentum * v + lr * r * g
    w  <- w - v

Parameters in a group with ``lars_exclude=True`` (every BN parameter and bias, as the paper) get
neither the weight decay nor the trust ratio. The schedule is a pure function of the step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LARS", "param_groups", "build_optimizer", "scaled_lr", "warmup_cosine", "warmup_steps_for", "set_lr", "OPTIMIZERS"]

OPTIMIZERS = ("lars", "sgd", "adamw")


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017) with the semantics of SimCLR's code.

    Args:
        params: parameters or param groups; a group may set ``lars_exclude=True``.
        lr: learning rate (the schedule sets each group's ``lr`` every step).
        momentum: heavy-ball momentum on lr * trust * g.
        weight_decay: L2 penalty added to the gradient.
        eta: trust coefficient.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            exclude = group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not exclude:
                    if group["weight_decay"] != 0:
                        g = g.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm.clamp_min(1e-30), torch.ones_like(w_norm)
                    )
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into a decayed/adapted group and an excluded one (BN parameters and biases).

    A parameter is excluded when it is 1-dimensional: in our models that is exactly BN weights and
    biases and linear/conv biases.
    """
    decay, exclude = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (exclude if p.ndim <= 1 else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay, lars_exclude=False)]
    if exclude:
        groups.append(dict(params=exclude, weight_decay=0.0, lars_exclude=True))
    return groups


def build_optimizer(
    name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9, eta: float = 0.001
) -> torch.optim.Optimizer:
    """LARS, SGD (heavy-ball) or AdamW over ``param_groups(model)``."""
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    for grp in groups:
        grp.pop("lars_exclude")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def scaled_lr(base_lr: float, batch_size: int, scaling: str) -> float:
    """Peak learning rate: ``linear`` = base * B / 256, ``sqrt`` = base * sqrt(B), ``none`` = base."""
    if scaling == "linear":
        return base_lr * batch_size / 256
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {scaling!r}; choose linear, sqrt or none")


def warmup_steps_for(warmup_epochs: float, steps_per_epoch: int, total_steps: int, max_fraction: float) -> int:
    """Warmup length in steps, capped at ``max_fraction`` of the run so that short runs still
    spend most of their steps at a useful learning rate (10 warmup epochs would swallow an 8-epoch run)."""
    return int(min(round(warmup_epochs * steps_per_epoch), math.floor(max_fraction * total_steps)))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Learning rate at ``step`` (0-based): linear warmup to ``peak_lr`` then cosine decay to 0.

    During warmup the rate of step s is peak * (s + 1) / warmup, so the first step is not wasted at 0.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr`` times the group's ``lr_mult`` (default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
