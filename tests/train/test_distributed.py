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
