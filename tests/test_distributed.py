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
