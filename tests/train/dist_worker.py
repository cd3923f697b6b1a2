"""Worker for test_distributed.py: 3 SimCLR optimiser steps on fixed views, with global BN.

    python dist_worker.py OUT.pt N        (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment,
                                           or none of them for the single-process reference on 2N images)
"""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # tests/, for conftest
from conftest import simclr_model  # noqa: E402
from simclr.train.distributed import all_reduce_mean, convert_global_bn, gather_with_grad, init_distributed, shutdown
from simclr.optim import build_optimizer


def main(out: str, n_total: int) -> None:
    env = init_distributed("cpu")
    torch.manual_seed(0)
    model = convert_global_bn(simclr_model(head_out_dim=16)).double()
    opt = build_optimizer("lars", model, 0.5, 1e-4)
    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(n_total, 3, 16, 16, generator=g, dtype=torch.float64)
    x2 = torch.rand(n_total, 3, 16, 16, generator=g, dtype=torch.float64)
    n = n_total // env.world_size
    sl = slice(env.rank * n, (env.rank + 1) * n)
    net = DDP(model, broadcast_buffers=False) if env.distributed else model
    losses = []
    for _ in range(3):
        out_ = net(x1[sl], x2[sl], gather=gather_with_grad if env.distributed else None, rank=env.rank)
        opt.zero_grad()
        out_["loss"].backward()
        opt.step()
        losses.append(all_reduce_mean(out_["contrastive_loss"]).item())
    if env.is_main:
        torch.save({"losses": losses, "state": model.state_dict()}, out)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
