"""The training loop: schedule, resume equivalence, monitoring, failure of a non-finite loss."""

import json

import pytest
import torch

from simclr.checkpoint import load_checkpoint
from simclr.config import Config, apply_overrides, resolve, validate
from simclr.data import synthetic_images
from simclr.train import Trainer, pretrain


def _cfg(out, **extra):
    pairs = [("data.path", "synthetic"), ("data.synthetic_train", "64"), ("data.synthetic_test", "16"), ("data.image_size", "16"),
             ("model.arch", "resnet18"), ("model.width", "0.125"), ("train.batch_size", "16"), ("train.epochs", "4"),
             ("train.device", "cpu"), ("train.progress", "false"), ("train.out", str(out)), ("monitor.knn_every", "2")]
    pairs += [(k, str(v)) for k, v in extra.items()]
    return apply_overrides(Config(), pairs)


class Stop(Exception):
    pass


def test_resumed_run_equals_uninterrupted(tmp_path):
    """Interrupted after epoch 2 (checkpoint written), resumed: the same encoder, byte for byte."""
    pretrain(_cfg(tmp_path / "a"), log=lambda *_: None)

    def stop_at_3(line):
        if line.startswith("epoch 3 "):
            raise Stop

    with pytest.raises(Stop):
        pretrain(_cfg(tmp_path / "b"), log=stop_at_3)
    assert load_checkpoint(tmp_path / "b")["epoch"] == 2
    cfg = _cfg(tmp_path / "b")
    cfg.train.resume = True
    pretrain(cfg, log=lambda *_: None)
    a = (tmp_path / "a" / "encoder.safetensors").read_bytes()
    b = (tmp_path / "b" / "encoder.safetensors").read_bytes()
    assert a == b
    la = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lb] == [1, 2, 3, 4]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]
    n = len(synthetic_images(_cfg(tmp_path / "c").data.synthetic_train, 1, 16))
    assert [r["images"] for r in lb] == [r["images"] for r in la] == [n - n % _cfg(tmp_path / "c").train.batch_size] * 4


def test_lr_follows_warmup_and_cosine(tmp_path):
    cfg = resolve(_cfg(tmp_path, **{"optim.warmup_epochs": 1, "optim.warmup_max_fraction": 0.5}), 16)
    validate(cfg)
    tr = Trainer(cfg, synthetic_images(64, 1, 16), log=lambda *_: None)
    assert tr.steps_per_epoch == 4 and tr.total_steps == 16 and tr.warmup_steps == 4
    assert tr.peak_lr == pytest.approx(1.0 * 16 / 256)
    lrs = []
    for x, y, _ in tr.batches.epoch(0):
        lrs.append(tr.train_step(x, y)["lr"].item())
    assert lrs == pytest.approx([tr.peak_lr * k / 4 for k in (1, 2, 3, 4)])
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(tr.peak_lr)
    assert tr.optimizer.param_groups[-1]["lr"] == pytest.approx(0.1 * tr.peak_lr)  # the online probe


def test_online_probe_does_not_touch_the_encoder(tmp_path):
    """The probe's cross-entropy is part of the loss that is back-propagated, yet the encoder's gradients
    are those of NT-Xent alone: the probe reads a detached h."""
    cfg = resolve(_cfg(tmp_path), 16)
    tr = Trainer(cfg, synthetic_images(64, 1, 16), log=lambda *_: None)
    x, y, _ = next(tr.batches.epoch(0))
    v = tr.augment(x, torch.Generator().manual_seed(0))
    out = tr.model(v, v.flip(-1), y)
    assert out["online_loss"] > 0
    out["loss"].backward()
    with_probe = [p.grad.clone() for p in tr.model.encoder.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tr.model.online.parameters())
    tr.model.zero_grad(set_to_none=True)
    _, z = tr.model.embed(v, v.flip(-1))
    (tr.model.objective_scale * tr.model.contrastive(z[:len(v)], z[len(v):])[0]).backward()
    for g_probe, p in zip(with_probe, tr.model.encoder.parameters()):
        torch.testing.assert_close(g_probe, p.grad, rtol=0, atol=0)


def test_non_finite_loss_stops_with_message(tmp_path):
    cfg = _cfg(tmp_path, **{"optim.base_lr": 1e30, "optim.name": "sgd", "train.epochs": 2})
    with pytest.raises(FloatingPointError, match="loss became"):
        pretrain(cfg, log=lambda *_: None)
    assert not (tmp_path / "checkpoint.pt").exists() or load_checkpoint(tmp_path)["epoch"] < 2
