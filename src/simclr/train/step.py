"""The backward pass of a training step: plain, or gradient-cached for batches larger than memory.

Both are built on the model's own pieces (``SimCLR.embed``, ``contrastive``, ``online_loss``), accumulate
the (loss-scaled) parameter gradients, and return the same dict as ``SimCLR.forward`` with ``loss``
detached. The optimiser step is the caller's.
"""

from __future__ import annotations

import contextlib

import torch

from simclr.model.simclr import SimCLR

__all__ = ["plain_backward", "cached_backward"]


def plain_backward(forward, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None, autocast, scale,
                   gather=None, rank: int = 0) -> dict[str, torch.Tensor]:
    """One forward of ``forward`` (the SimCLR module, possibly wrapped in DDP or compiled) on views
    v1, v2 (n, 3, S, S), then backward of ``scale(loss)``."""
    with autocast:
        out = forward(v1, v2, labels, gather=gather, rank=rank)
    scale(out["loss"]).backward()
    out["loss"] = out["loss"].detach()
    return out


def cached_backward(model: SimCLR, v1: torch.Tensor, v2: torch.Tensor, labels: torch.Tensor | None, chunk: int,
                    autocast=None, scale=None) -> dict[str, torch.Tensor]:
    """Gradient-cached SimCLR step (Gao et al., 2021): the loss of the whole batch, the memory of a chunk.

    1. Embed the batch chunk by chunk without autograd graphs (BN running statistics frozen, so they
       are updated once, in step 3).
    2. NT-Xent over the full batch of projections; back-propagate ``scale(objective_scale x loss)`` to the
       projections only.
    3. Re-run each chunk with its graph and back-propagate the cached projection gradients (which already
       carry the scale) and the chunk's share of the online probe's scaled loss.

    The parameter gradients equal those of the plain step when the model has no batch statistics;
    with BatchNorm in training mode each chunk is normalised with its own statistics.
    """
    autocast = autocast or contextlib.nullcontext()
    scale = scale or (lambda t: t)
    n = v1.shape[0]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        with torch.no_grad(), autocast:
            zs = [model.embed(v1[i : i + chunk], v2[i : i + chunk])[1] for i in range(0, n, chunk)]
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    z1 = torch.cat([z[: len(z) // 2] for z in zs]).requires_grad_()
    z2 = torch.cat([z[len(z) // 2 :] for z in zs]).requires_grad_()
    loss, acc = model.contrastive(z1, z2)
    scale(model.objective_scale * loss).backward()
    probe = model.online is not None and labels is not None
    online_loss = torch.zeros((), device=v1.device, dtype=z1.dtype)
    online_acc = torch.zeros((), device=v1.device, dtype=z1.dtype)
    for i in range(0, n, chunk):
        with autocast:
            h, z = model.embed(v1[i : i + chunk], v2[i : i + chunk])
        c = z.shape[0] // 2
        total = (z[:c] * z1.grad[i : i + c]).sum() + (z[c:] * z2.grad[i : i + c]).sum()
        if probe:
            ce, acc_c = model.online_loss(h, labels[i : i + c])
            total = total + scale(ce * (c / n))  # the cached gradients are scaled already: scale only the new term
            online_loss += ce.detach() * (c / n)
            online_acc += acc_c.detach() * (c / n)
        total.backward()
    out = {"contrastive_loss": loss.detach(), "contrastive_acc": acc,
           "loss": model.objective_scale * loss.detach() + online_loss}
    if probe:
        out.update(online_loss=online_loss, online_acc=online_acc)
    return out
