"""Faults: signals, kill -9, non-finite losses, a full disk, kept checkpoints (issue 5)."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from simclr.checkpoint import load_checkpoint, save_checkpoint
from simclr.config import Config, apply_overrides
from simclr.engine import NonFiniteLoss, Trainer, pretrain

TINY = ["--data", "synthetic", "--data.synthetic_train", "256", "--data.image_size", "16", "--arch", "resnet18", "--width",
        "0.125", "--batch-size", "32", "--device", "cpu", "--train.progress", "false", "--monitor.knn_every", "0",
        "--train.threads", "1"]


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "simclr", "pretrain", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _finish(args):
    p = _cli(args)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return out


def test_sigterm_saves_exact_position_and_resume_matches(tmp_path):
    ref = tmp_path / "ref"
    _finish([*TINY, "--epochs", "3", "--out", str(ref)])
    run = tmp_path / "run"
    p = _cli([*TINY, "--epochs", "3", "--out", str(run)])
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists():  # inside epoch 2
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    state = load_checkpoint(run)
    steps_per_epoch = 256 // 32
    assert state["step"] % steps_per_epoch != 0 or state["partial"] == {}  # usually mid-epoch
    out = _finish([*TINY, "--epochs", "3", "--out", str(run), "--resume"])
    assert "resumed from" in out
    assert (run / "encoder.safetensors").read_bytes() == (ref / "encoder.safetensors").read_bytes()
    la = [json.loads(x)["loss"] for x in (ref / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, abs=1e-6)


def test_five_kill9_then_resume_is_byte_identical(tmp_path):
    """Issue 5, check 2: five SIGKILLs at random moments of an 8-epoch run, each followed by --resume."""
    args = [*TINY, "--epochs", "8"]
    ref = tmp_path / "ref"
    t0 = time.time()
    _finish([*args, "--out", str(ref)])
    duration = time.time() - t0
    run = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    while kills < 5:
        resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
        p = _cli([*args, "--out", str(run), *resume])
        time.sleep(rng.uniform(0.15, 0.6) * duration)
        if p.poll() is not None:  # finished before the kill: start over in a fresh folder
            assert p.returncode == 0, p.stderr.read()
            continue
        p.kill()
        p.wait()
        kills += 1
    _finish([*args, "--out", str(run)] + (["--resume"] if (run / "checkpoint.pt").exists() else []))
    assert (run / "encoder.safetensors").read_bytes() == (ref / "encoder.safetensors").read_bytes()
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
    assert not list(run.glob(".*.tmp"))


def _cfg(out, **extra):
    pairs = [("data.path", "synthetic"), ("data.synthetic_train", "64"), ("data.image_size", "16"), ("model.arch", "resnet18"),
             ("model.width", "0.125"), ("train.batch_size", "16"), ("train.epochs", "3"), ("train.device", "cpu"),
             ("train.progress", "false"), ("train.out", str(out)), ("monitor.knn_every", "0")]
    return apply_overrides(Config(), pairs + [(k, str(v)) for k, v in extra.items()])


def _poison(monkeypatch, at_steps):
    """Make the loss NaN at the given global steps (0-based)."""
    orig = Trainer.train_step

    def forward_nan(self, x, y):
        if self.step in at_steps:
            real = self.forward

            def bad(*a, **k):
                out = real(*a, **k)
                out["loss"] = out["loss"] * float("nan")
                out["contrastive_loss"] = out["contrastive_loss"] * float("nan")
                return out

            self.forward = bad
            try:
                return orig(self, x, y)
            finally:
                self.forward = real
        return orig(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", forward_nan)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    """Issue 5, check 6."""
    _poison(monkeypatch, {5})  # epoch 2 (4 steps an epoch)
    with pytest.raises(NonFiniteLoss, match="non-finite at step 6"):
        pretrain(_cfg(tmp_path), log=lambda *_: None)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1 and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    r = subprocess.run([sys.executable, "-m", "simclr", "pretrain", *TINY, "--epochs", "1", "--out", str(tmp_path / "x"),
                        "--optim.name", "sgd", "--optim.base_lr", "1e30"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "non-finite" in r.stderr and "Traceback" not in r.stderr


def test_nonfinite_steps_can_be_skipped(tmp_path, monkeypatch):
    _poison(monkeypatch, {2, 6})
    pretrain(_cfg(tmp_path, **{"train.skip_nonfinite": "true"}), log=lambda *_: None)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_steps") for r in recs] == [1, 2, 2]
    assert all(r["loss"] == r["loss"] for r in recs)  # finite averages


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, tmp_path / "checkpoint.pt")
    real_save = torch.save

    def enospc(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(tmp_path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_keep_last_k_checkpoints(tmp_path):
    pretrain(_cfg(tmp_path, **{"train.epochs": 5, "train.keep_checkpoints": 3}), log=lambda *_: None)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["epoch_0003.pt", "epoch_0004.pt", "epoch_0005.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "epoch_0004.pt")["epoch"] == 4
