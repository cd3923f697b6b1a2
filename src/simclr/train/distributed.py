"""A small helper layer over torch.distributed: set-up from torchrun's environment, gathering
with gradients, and global (cross-device) BatchNorm that also works on CPU with gloo.

Launch with ``torchrun --nproc_per_node G -m simclr pretrain ...``; a plain ``simclr pretrain``
runs as one process and none of this communicates.
"""

from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["DistEnv", "init_distributed", "gather_with_grad", "all_reduce_mean", "GlobalBatchNorm", "convert_global_bn", "shutdown"]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, timeout_s: float = 60.0) -> DistEnv:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    NCCL on CUDA, gloo elsewhere. ``timeout_s`` bounds every collective, so the survivors of a
    dead rank fail with an error instead of waiting forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return env


def shutdown(barrier: bool = True) -> None:
    """Leave the process group. After success the barrier first lets every rank finish its
    collectives (gloo can abort a process whose peer tears the group down under it); after an
    error there is no barrier, since the other ranks may never reach it."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (n, ...) from every rank in rank order: (world * n, ...).

    The backward pass sends each rank the gradient of its own slice summed over all ranks' losses,
    so negatives from other devices train this device's encoder too.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of functional collectives without this autograd rule
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), 0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (no gradient), e.g. for logging."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


def _all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(x)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batch of every rank (the paper's global BN).

    Mean and variance come from all-reduced sums, with gradients through the reduction, so the
    output and the gradients equal those of one process holding the whole batch. In eval mode, or
    in a single process, it is an ordinary BatchNorm. Works for (N, C) and (N, C, *) inputs.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device, dtype=xf.dtype)
        stats = torch.cat((xf.sum(dims), xf.pow(2).sum(dims), count))
        stats = _all_reduce_sum_with_grad(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.affine or self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d with a GlobalBatchNorm carrying the same parameters and buffers."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, affine=True,
                              track_running_stats=module.track_running_stats)
        new.weight = module.weight
        if module.bias is None:
            new.register_parameter("bias", None)
        else:
            new.bias = module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_global_bn(child))
    return module
