"""Data parallelism on CPU (gloo): global NT-Xent and global BN equal one process holding the whole batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(out: Path, n_total: int, world: int) -> None:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(HERE / "dist_worker.py"), str(out), str(n_total)], env=env,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    """Acceptance check 1 of issue 4: loss (1e-6) and parameters after 3 LARS steps (1e-5), with BatchNorm."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, str(HERE / "dist_worker.py"), str(tmp_path / "one.pt"), "16"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _run_workers(tmp_path / "two.pt", 16, 2)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) < 1e-6, (one["losses"], two["losses"])
    assert one["losses"][0] != one["losses"][2]  # the steps did change the model
    for k, v in one["state"].items():
        if v.is_floating_point():
            torch.testing.assert_close(two["state"][k], v, atol=1e-5, rtol=0, msg=k)


TINY = ["--data", "synthetic", "--data.synthetic_train", "256", "--arch", "resnet18", "--width", "0.125", "--batch-size", "64",
        "--device", "cpu", "--train.progress", "false", "--monitor.knn_every", "0"]


def _torchrun(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "simclr", "pretrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_torchrun_pretrain_and_resume(tmp_path):
    """Acceptance check 2 of issue 4, on synthetic data: one metrics file, one checkpoint, resume continues."""
    import json

    out = tmp_path / "run"
    r = _torchrun([*TINY, "--epochs", "2", "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("done:") == 1  # only rank 0 reports
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["checkpoint.pt", "config.yaml", "encoder.safetensors", "metrics.jsonl"]
    r = _torchrun([*TINY, "--epochs", "3", "--out", str(out), "--resume"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stdout and r.stdout.count("resumed from") == 1
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    from simclr.checkpoint import load_checkpoint

    assert load_checkpoint(out)["step"] == 3 * (256 // 64)


@pytest.mark.slow
def test_killing_one_rank_stops_the_other(tmp_path):
    """Acceptance check 4 of issue 4: the survivor fails with an error within a minute, no hang."""
    import signal
    import time

    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        args = [*TINY, "--data.synthetic_train", "2048", "--epochs", "50", "--out", str(tmp_path / "run")]
        procs.append(subprocess.Popen([sys.executable, "-m", "simclr", "pretrain", *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.time() + 120
    while not (tmp_path / "run" / "metrics.jsonl").exists():  # both ranks are training
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    os.kill(procs[1].pid, signal.SIGKILL)
    t0 = time.time()
    try:
        procs[0].wait(timeout=60)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("rank 0 still running 60 s after rank 1 died")
    assert procs[0].returncode != 0
    assert time.time() - t0 < 60
    procs[1].wait()


# -- global BN and the gather, in process (fast) ------------------------------------------------------


def _saved_bytes(fn):
    """Bytes of the tensors autograd keeps for backward while fn() runs, and fn's result."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_global_bn_memory_for_backward(dtype):
    """Acceptance check 1 of issue 11: the lean global BN keeps at most 1.5x nn.BatchNorm2d's memory for
    backward (the same code path as under gloo; at world size 1 its collectives are skipped)."""
    from simclr.train.distributed import GlobalBatchNorm, convert_global_bn

    x = torch.randn(8, 16, 32, 32).to(dtype)
    ref = torch.nn.BatchNorm2d(16)
    ours = convert_global_bn(torch.nn.BatchNorm2d(16), device="cpu")
    assert isinstance(ours, GlobalBatchNorm)
    ref_bytes, _ = _saved_bytes(lambda: ref(x.clone().requires_grad_()))
    our_bytes, y = _saved_bytes(lambda: ours(x.clone().requires_grad_()))
    assert y.dtype == dtype
    assert ref_bytes >= x.numel() * x.element_size()  # the hook does see BatchNorm2d's saved input
    assert our_bytes <= 1.5 * ref_bytes, (our_bytes, ref_bytes)


def test_global_bn_equals_batchnorm_in_one_process():
    """Outputs, gradients and running statistics (both momentum rules) equal nn.BatchNorm's."""
    from simclr.train.distributed import convert_global_bn

    torch.manual_seed(0)
    for shape, momentum in (((6, 5, 4, 3), 0.1), ((7, 5), None)):
        ref = torch.nn.BatchNorm2d(5, momentum=momentum) if len(shape) == 4 else torch.nn.BatchNorm1d(5, momentum=momentum)
        ref = ref.double()
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
        ours = convert_global_bn(__import__("copy").deepcopy(ref), device="cpu")
        assert list(ours.state_dict()) == list(ref.state_dict())
        for _ in range(2):
            x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).requires_grad_()
            xr = x.detach().clone().requires_grad_()
            g = torch.randn(shape, dtype=torch.float64)
            y, yr = ours(x), ref(xr)
            torch.testing.assert_close(y, yr, atol=1e-12, rtol=0)
            y.backward(g)
            yr.backward(g)
        torch.testing.assert_close(x.grad, xr.grad, atol=1e-12, rtol=0)
        for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=k)
        for a, b in ((ours.weight.grad, ref.weight.grad), (ours.bias.grad, ref.bias.grad)):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
        ours.eval(), ref.eval()
        torch.testing.assert_close(ours(x), ref(xr), atol=1e-12, rtol=0)


def test_convert_global_bn_picks_syncbatchnorm_on_cuda():
    """Acceptance check 1 of issue 11, without a GPU: a CUDA model gets nn.SyncBatchNorm, a CPU model the lean one;
    parameters, buffers and state_dict keys carry over."""
    from conftest import simclr_model

    from simclr.train import distributed as d

    for device, kind in ((torch.device("cuda"), torch.nn.SyncBatchNorm), ("cpu", d.GlobalBatchNorm), (None, d.GlobalBatchNorm)):
        model = simclr_model()
        keys = list(model.state_dict())
        bns = [name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        weight = dict(model.named_modules())[bns[0]].weight
        model = d.convert_global_bn(model, device)
        mods = dict(model.named_modules())
        assert bns and all(type(mods[n]) is kind for n in bns), (device, {type(mods[n]) for n in bns})
        assert mods[bns[0]].weight is weight
        assert list(model.state_dict()) == keys


def test_convert_global_bn_follows_the_model_device(monkeypatch):
    from simclr.train import distributed as d

    monkeypatch.setattr(d, "_module_device", lambda m: torch.device("cuda", 0))
    model = d.convert_global_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    assert isinstance(model[1], torch.nn.SyncBatchNorm)
    monkeypatch.undo()
    model = d.convert_global_bn(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    assert isinstance(model[1], d.GlobalBatchNorm)


# -- 2 gloo processes vs 1 (torch.multiprocessing.spawn, seconds) -------------------------------------

_SIZES = (3, 5)  # unequal local batches: the global count comes from the collective


def _bn_data():
    g = torch.Generator().manual_seed(0)
    n = sum(_SIZES)
    return dict(x4=torch.randn(n, 6, 5, 4, generator=g, dtype=torch.float64) * 2 + 3,
                g4=torch.randn(n, 6, 5, 4, generator=g, dtype=torch.float64),
                x2=torch.randn(n, 6, generator=g, dtype=torch.float64) - 4,
                g2=torch.randn(n, 6, generator=g, dtype=torch.float64),
                z=torch.randn(2 * 4, 3, generator=g, dtype=torch.float64),
                w=torch.randn(2, 2 * 4, 3, generator=g, dtype=torch.float64))


def _bn_layers():
    """A BatchNorm2d and a scale-only BatchNorm1d with cumulative averaging (momentum None)."""
    bn4 = torch.nn.BatchNorm2d(6).double()
    bn2 = torch.nn.BatchNorm1d(6, momentum=None).double()
    bn2.register_parameter("bias", None)
    with torch.no_grad():
        bn4.weight.uniform_(0.5, 1.5)
        bn4.bias.uniform_(-1, 1)
        bn2.weight.uniform_(0.5, 1.5)
    return bn4, bn2


def _run_bn(bn4, bn2, x4, g4, x2, g2):
    """Two training steps through both layers; returns outputs and input gradients of the second."""
    for _ in range(2):
        a, b = x4.clone().requires_grad_(), x2.clone().requires_grad_()
        y4, y2 = bn4(a), bn2(b)
        ((y4 * g4).sum() + (y2 * g2).sum()).backward()
    return dict(y4=y4.detach(), dx4=a.grad, y2=y2.detach(), dx2=b.grad)


def _spawned_worker(rank, world, port, out):
    import torch.distributed as dist

    from simclr.train.distributed import convert_global_bn, gather_with_grad

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        d = _bn_data()
        torch.manual_seed(0)
        bn4, bn2 = (convert_global_bn(m, device="cpu") for m in _bn_layers())
        lo = sum(_SIZES[:rank])
        sl = slice(lo, lo + _SIZES[rank])
        res = _run_bn(bn4, bn2, d["x4"][sl], d["g4"][sl], d["x2"][sl], d["g2"][sl])
        res.update({f"bn4.{k}": v for k, v in bn4.state_dict().items()}, **{f"bn2.{k}": v for k, v in bn2.state_dict().items()})
        res.update({"bn4.weight.grad": bn4.weight.grad, "bn4.bias.grad": bn4.bias.grad, "bn2.weight.grad": bn2.weight.grad})
        # the gather: every rank gets all rows; each rank's gradient is the sum over ranks' losses of its slice
        z = d["z"][rank * 4 : (rank + 1) * 4].clone().requires_grad_()
        zz = gather_with_grad(z)
        (zz * d["w"][rank]).sum().backward()
        res.update(gathered=zz.detach(), dz=z.grad)
        torch.save(res, f"{out}/rank{rank}.pt")
        # no rank leaves while the other still has collectives in flight (gloo aborts the process)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_global_bn_and_gather_equal_one(tmp_path):
    """Acceptance check 1 of issue 11: the lean global BN in 2 gloo processes (unequal local batches) equals
    nn.BatchNorm on the whole batch -- outputs, input / weight / bias gradients, running statistics; and
    gather_with_grad (functional collectives) gathers in rank order and sums gradients over ranks."""
    import torch.multiprocessing as mp

    mp.spawn(_spawned_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    d = _bn_data()
    torch.manual_seed(0)
    bn4, bn2 = _bn_layers()
    ref = _run_bn(bn4, bn2, d["x4"], d["g4"], d["x2"], d["g2"])
    for k in ("y4", "dx4", "y2", "dx2"):
        torch.testing.assert_close(torch.cat([r[k] for r in ranks]), ref[k], atol=1e-12, rtol=0, msg=k)
    state = {**{f"bn4.{k}": v for k, v in bn4.state_dict().items()}, **{f"bn2.{k}": v for k, v in bn2.state_dict().items()}}
    for k, v in state.items():
        for r in ranks:
            torch.testing.assert_close(r[k], v, atol=1e-12, rtol=0, msg=k)
    # parameter gradients are each rank's share (DDP averages them): their sum is the whole batch's
    for k, v in (("bn4.weight.grad", bn4.weight.grad), ("bn4.bias.grad", bn4.bias.grad), ("bn2.weight.grad", bn2.weight.grad)):
        torch.testing.assert_close(ranks[0][k] + ranks[1][k], v, atol=1e-11, rtol=0, msg=k)
    for r in range(2):
        torch.testing.assert_close(ranks[r]["gathered"], d["z"], atol=0, rtol=0)
        torch.testing.assert_close(ranks[r]["dz"], (d["w"][0] + d["w"][1])[r * 4 : (r + 1) * 4], atol=1e-12, rtol=0)


def _compile_worker(rank, world, port, out):
    import torch.distributed as dist

    from simclr.train.distributed import convert_global_bn, gather_with_grad

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        nn = torch.nn
        m = convert_global_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                            nn.Flatten(), nn.Linear(8, 4), nn.BatchNorm1d(4)), device="cpu")

        def step(x):
            z = gather_with_grad(m(x))
            return (z.pow(2).sum(1) * torch.arange(z.shape[0], dtype=z.dtype)).sum()

        ex = torch._dynamo.explain(step)(torch.randn(4, 3, 8, 8))
        torch.save({"breaks": ex.graph_break_count, "reasons": [str(r.reason) for r in ex.break_reasons]}, f"{out}/rank{rank}.pt")
        # no rank leaves while the other still has collectives in flight (gloo aborts the process)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_bn_and_gather_compile_without_graph_breaks(tmp_path):
    """Item 5 of issue 11: under 2-process gloo the lean global BN and the gather trace as one graph."""
    import torch.multiprocessing as mp

    mp.spawn(_compile_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert res["breaks"] == 0, res["reasons"]


def _ddp_compile_worker(rank, world, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from conftest import simclr_model
    from simclr.train.distributed import convert_global_bn, gather_with_grad

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = DDP(convert_global_bn(simclr_model(num_classes=5), "cpu"), broadcast_buffers=False)
        g = torch.Generator().manual_seed(rank)
        x1, x2 = torch.rand(4, 3, 16, 16, generator=g), torch.rand(4, 3, 16, 16, generator=g)
        y = torch.randint(0, 5, (4,), generator=g)
        ex = torch._dynamo.explain(net)(x1, x2, y, gather=gather_with_grad, rank=rank)
        torch.save({"breaks": ex.graph_break_count, "reasons": [str(r.reason) for r in ex.break_reasons]}, f"{out}/rank{rank}.pt")
        # no rank leaves while the other still has collectives in flight (gloo aborts the process)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_the_ddp_training_forward_compiles_with_at_most_two_breaks(tmp_path):
    """Issue 11, acceptance 3: the model as the Trainer compiles it under 2-process gloo (DDP, global BN,
    negatives gathered with gradients, online probe) breaks the graph at most twice."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_compile_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert res["breaks"] <= 2, res["reasons"]
