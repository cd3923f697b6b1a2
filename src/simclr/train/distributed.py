"""A small helper layer over torch.distributed: set-up from torchrun's environment, gathering
with gradients, and global (cross-device) BatchNorm: ``nn.SyncBatchNorm`` on CUDA, and a lean
equivalent (``GlobalBatchNorm``) on CPU with gloo, where SyncBatchNorm does not run.

The collectives are torch's functional collectives, which torch.compile traces without a graph
break (the older ``torch.distributed.nn`` ones are deprecated and break the graph).

Launch with ``torchrun --nproc_per_node G -m simclr pretrain ...``; a plain ``simclr pretrain``
runs as one process and none of this communicates.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["DistEnv", "init_distributed", "gather_with_grad", "all_reduce_mean", "GlobalBatchNorm", "convert_global_bn", "shutdown"]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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


def _world(group=None) -> int:
    """Processes in ``group`` (default: all); 1 without an initialised process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _funcol():
    import torch.distributed._functional_collectives as funcol

    return funcol


def _wait(t: torch.Tensor) -> torch.Tensor:
    """The result of a functional collective as a plain tensor (eager mode returns a waitable wrapper)."""
    return t.wait() if isinstance(t, _funcol().AsyncCollectiveTensor) else t


def _all_gather(x: torch.Tensor, group=None) -> torch.Tensor:
    """(world * n, ...) without autograd, as one functional collective."""
    funcol = _funcol()
    g = group if group is not None else dist.group.WORLD
    fn = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # the latter: older torch
    return _wait(fn(x.contiguous(), 0, g))


def _all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    g = group if group is not None else dist.group.WORLD
    return _wait(_funcol().all_reduce(x.contiguous(), "sum", g))


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (n, ...) from every rank in rank order: (world * n, ...).

    The backward pass sends each rank the gradient of its own slice summed over all ranks' losses
    (a reduce-scatter), so negatives from other devices train this device's encoder too.
    """
    if _world() == 1:
        return x
    funcol = _funcol()
    fn = getattr(funcol, "all_gather_single_autograd", None)
    if fn is None:  # older torch: the same op under its former name
        fn = getattr(funcol, "all_gather_tensor_autograd", None)
    if fn is None:  # older torch still: the deprecated autograd collectives (they break torch.compile graphs)
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x.contiguous()), 0)
    return _wait(fn(x.contiguous(), 0, dist.group.WORLD))


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (no gradient), e.g. for logging."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / dist.get_world_size()


class _GlobalBatchNormFn(torch.autograd.Function):
    """Batch normalisation in training mode over the batches of every rank of ``group``.

    Forward: one all-gather of each rank's per-channel [count, mean, M2] (M2 = sum of squared
    deviations from the rank's mean, from a two-pass fp32 reduction), combined with Chan's formula,
    so there is no E[x^2] - E[x]^2 cancellation. Backward: one all-reduce of the per-channel sums of
    dy and dy * (x - mean). Only the input and per-channel vectors are saved; the statistics are in
    fp32 (fp64 for fp64 inputs) whatever the input dtype, the output has the input's dtype. Counts
    are device tensors: no host synchronisation. The weight and bias gradients are the local sums
    (DistributedDataParallel averages them, as with nn.SyncBatchNorm); the input gradient is that of
    the sum of all ranks' losses.

    Returns (y, mean, unbiased variance); the last two carry no gradient and feed the running statistics.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, group, world: int):
        with torch.autocast(x.device.type, enabled=False):  # the dtypes below are chosen, not autocast's
            return _GlobalBatchNormFn._forward(ctx, x, weight, bias, eps, group, world)

    @staticmethod
    def _forward(ctx, x, weight, bias, eps: float, group, world: int):
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        cd = torch.float64 if x.dtype == torch.float64 else torch.float32
        xc = x.to(cd)
        var_l, mean_l = torch.var_mean(xc, dims, correction=0)
        n_l = x.numel() // c
        if world > 1:
            count = mean_l.new_full((1,), float(n_l))  # a fill on the device, not a host-to-device copy
            stats = _all_gather(torch.cat((count, mean_l, var_l * n_l)), group).view(world, 2 * c + 1)
            counts, means, m2s = stats[:, :1], stats[:, 1 : c + 1], stats[:, c + 1 :]
            n = counts.sum()
            mean = (means * counts).sum(0) / n
            m2 = (m2s + counts * (means - mean).pow(2)).sum(0)
            var = m2 / n
            var_unbiased = m2 / (n - 1).clamp_min(1)
        else:
            n = mean_l.new_full((), float(n_l))
            mean, var = mean_l, var_l
            var_unbiased = var_l * (n_l / max(n_l - 1, 1))
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(cd)
        shift = -mean * scale if bias is None else bias.to(cd) - mean * scale
        y = torch.addcmul(shift.view(shape), xc, scale.view(shape)).to(x.dtype)
        del xc
        ctx.save_for_backward(x, weight, mean, invstd, n.reshape(1))
        ctx.has_bias, ctx.group, ctx.world = bias is not None, group, world
        ctx.mark_non_differentiable(mean, var_unbiased)
        return y, mean, var_unbiased

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        with torch.autocast(dy.device.type, enabled=False):
            return _GlobalBatchNormFn._backward(ctx, dy)

    @staticmethod
    def _backward(ctx, dy):
        x, weight, mean, invstd, n = ctx.saved_tensors
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        cd = mean.dtype
        dyc, xmu = dy.to(cd), x.to(cd) - mean.view(shape)
        sum_dy = dyc.sum(dims)
        sum_dy_xmu = (dyc * xmu).sum(dims)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            g_dy, g_dy_xmu = sum_dy, sum_dy_xmu
            if ctx.world > 1:
                g = _all_reduce_sum(torch.cat((sum_dy, sum_dy_xmu)), ctx.group)
                g_dy, g_dy_xmu = g[:c], g[c:]
            a = invstd if weight is None else invstd * weight.to(cd)
            # dx = a * (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))), means over the global batch
            k = (g_dy_xmu / n) * invstd * invstd
            dx = torch.addcmul((dyc - g_dy.div(n).view(shape)), xmu, k.view(shape), value=-1)
            dx = dx.mul_(a.view(shape)).to(x.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            dw = (sum_dy_xmu * invstd).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = sum_dy.to(weight.dtype if weight is not None else cd)
        return dx, dw, db, None, None, None


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the batch of every rank (the paper's global BN),
    for CPU / gloo, where ``nn.SyncBatchNorm`` does not run (on CUDA ``convert_global_bn`` picks that).

    The output, the gradients and the running statistics equal those of ``nn.BatchNorm`` on the
    concatenation of all ranks' batches (unbiased running variance over the global count). Training
    mode runs ``_GlobalBatchNormFn`` (one collective forward, one backward, none in one process); eval
    mode is an ordinary BatchNorm. Works for (N, C) and (N, C, *) inputs; its parameters and buffers
    (hence state_dict keys) are those of ``nn.BatchNorm2d``.
    """

    process_group = None  # None: all processes

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        if not bn_training:
            return super().forward(x)
        y, mean, var = _GlobalBatchNormFn.apply(x, self.weight, self.bias, self.eps, self.process_group,
                                                _world(self.process_group))
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked  # a tensor: no sync
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype) * m)
                self.running_var.mul_(1 - m).add_(var.to(self.running_var.dtype) * m)
        return y


def _module_device(module: nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (CPU when it has neither)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _to_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, _BN_TYPES) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, affine=module.affine,
                              track_running_stats=module.track_running_stats)
        if module.affine:
            new.weight = module.weight
            if module.bias is None:  # a scale-only BN (the projection head's last)
                new.register_parameter("bias", None)
            else:
                new.bias = module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _to_global_bn(child))
    return module


def convert_global_bn(module: nn.Module, device: torch.device | str | None = None, process_group=None) -> nn.Module:
    """Make every BatchNorm layer global (statistics over all ranks): ``nn.SyncBatchNorm`` when the
    model runs on CUDA (``device``, or else where its parameters are), ``GlobalBatchNorm`` elsewhere.

    The new layers share the old ones' parameters and buffers, so state_dict keys do not change.
    Pass the device the model will run on when converting before moving it.
    """
    dev = torch.device(device) if device is not None else _module_device(module)
    if dev.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    out = _to_global_bn(module)
    if process_group is not None:
        for m in out.modules():
            if isinstance(m, GlobalBatchNorm):
                m.process_group = process_group
    return out
