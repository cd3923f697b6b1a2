"""Optimisers and learning-rate schedules.

LARS follows the official SimCLR implementation (lars_optimizer.py):

    g  <- g + weight_decay * w
    r  <- eta * ||w|| / ||g||        (1 when either norm is 0)
    v  <- momentum * v + lr * r * g
    w  <- w - v

Parameters in a group with ``lars_exclude=True`` (every BN parameter and bias, as the paper) get
neither the weight decay nor the trust ratio. The update runs as multi-tensor (``torch._foreach_*``)
operations, about 20 operator calls per step whatever the model, where a loop over parameters makes
about 15 per decayed parameter (1,100 for ResNet-50); the loop stays as the reference
(``LARS(..., foreach=False)``). The schedule is a pure function of the step.
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
        foreach: ``None`` (default) updates CPU and CUDA tensors with multi-tensor (``torch._foreach_*``)
            operations, a handful of operations per group and (device, dtype) instead of about 15 per
            parameter, and other tensors with the per-parameter loop; ``True`` uses the multi-tensor
            path for every tensor, ``False`` the loop (the reference implementation) for all. Both give
            the same update (bit-identical on CPU). The choice is an attribute of the optimiser, not of
            its param groups, so it is not saved in ``state_dict()``, and checkpoints written by either
            path (state: one ``momentum_buffer`` per parameter) load into the other. The gain is on
            CUDA (fused kernels, far fewer launches); on CPU PyTorch runs a foreach operation as the
            per-tensor kernels in a C++ loop, so it saves Python dispatch only and loses some cache
            locality (one step of ResNet-50 on one core: 123 ms against 104 ms for the loop; ResNet-18
            width 0.25: 2.1 ms against 2.0 ms), negligible beside a CPU training step; it is on there by
            default so that CPU profiles count the operator calls a CUDA step makes.

    Sparse gradients are refused. No path synchronises with the host: trust ratios stay on the device.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001,
                 foreach: bool | None = None):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if foreach not in (None, True, False):
            raise ValueError(f"foreach must be None, True or False, got {foreach!r}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False)
        super().__init__(params, defaults)
        self.foreach = foreach

    def __getstate__(self) -> dict:  # pickling and deepcopy keep the choice (Optimizer's drops other attributes)
        return {**super().__getstate__(), "foreach": self.foreach}

    def __setstate__(self, state: dict) -> None:
        state.setdefault("foreach", getattr(self, "foreach", None))
        super().__setstate__(state)

    def _use_foreach(self, p: torch.Tensor) -> bool:
        if self.foreach is not None:
            return self.foreach
        # plain dense tensors on the devices whose foreach kernels we rely on (tensor subclasses such as
        # DTensor, and other devices, keep the loop)
        return type(p) in (torch.Tensor, nn.Parameter) and p.device.type in ("cpu", "cuda")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # parameters with a gradient, bucketed as the multi-tensor kernels need them: one
            # (device, dtype) per bucket; None collects the parameters that take the loop
            buckets: dict[tuple | None, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                key = (p.device, p.dtype) if self._use_foreach(p) else None
                buckets.setdefault(key, []).append(p)
            for key, params in buckets.items():
                (self._update_loop if key is None else self._update_foreach)(group, params)
        return loss

    def _update_loop(self, group: dict, params: list[torch.Tensor]) -> None:
        """The reference update, one parameter at a time."""
        exclude = group["lars_exclude"]
        for p in params:
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

    def _update_foreach(self, group: dict, params: list[torch.Tensor]) -> None:
        """The same update with multi-tensor operations over ``params`` (one device and dtype).

        The operations are those of the loop, element for element, so the results agree exactly on CPU
        (where the foreach operations run the per-tensor kernels) and to rounding on CUDA. On CUDA
        every operation here is one fused kernel (or a few) for the whole list, except the product of
        each gradient with its own trust ratio: a 0-d tensor per parameter is not on PyTorch's fused
        path (it needs equal sizes), so that one runs one small kernel per parameter, launched from C++.
        """
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(buf)
        if not group["lars_exclude"]:
            owned = group["weight_decay"] != 0  # grads are then our own tensors, not p.grad
            if owned:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm.clamp_min(1e-30), 1.0)
            trust = trust.unbind()  # 0-d views, one per parameter: no host synchronisation
            if owned:
                torch._foreach_mul_(grads, trust)
            else:
                grads = torch._foreach_mul(grads, trust)
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, grads, alpha=group["lr"])
        torch._foreach_sub_(params, bufs)


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
    name: str, model: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9, eta: float = 0.001,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """LARS, SGD (heavy-ball) or AdamW over ``param_groups(model)``; ``foreach`` as the optimisers take it
    (None: PyTorch's default, multi-tensor updates where supported)."""
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, foreach=foreach)
    for grp in groups:
        grp.pop("lars_exclude")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, foreach=foreach)
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
