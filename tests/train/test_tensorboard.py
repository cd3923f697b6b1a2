"""train.tensorboard (issue 14, check 1): tensorboard's own event reader finds the epoch losses of metrics.jsonl,
the first view pairs and the embedding projector's data."""

import json

import numpy as np
import pytest
import torch

from simclr.cli import main

TINY = ["--data", "synthetic", "--data.synthetic_train", "96", "--data.image_size", "16", "--arch", "resnet18", "--width",
        "0.0625", "--batch-size", "16", "--device", "cpu", "--train.progress", "false"]


def test_tensorboard_holds_what_metrics_jsonl_holds(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "2", "--train.tensorboard", "true", "--train.tensorboard_every", "2",
                 "--out", str(run)]) == 0
    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = acc.Scalars("epoch/loss")
    assert [e.step for e in losses] == [1, 2]
    np.testing.assert_allclose([e.value for e in losses], [r["loss"] for r in records], rtol=1e-6)
    for name in ("epoch/contrastive_acc", "epoch/lr", "epoch/images_per_sec", "epoch/online_acc"):
        assert len(acc.Scalars(name)) == 2, name
    assert [e.step for e in acc.Scalars("step/loss")] == [2, 4, 6, 8, 10, 12]  # 6 steps an epoch, every 2nd
    views = acc.Images("views")
    assert len(views) == 1 and views[0].width == 2 * (16 + 2) + 2 and views[0].height == 16 * (16 + 2) + 2
    # the projector: h of the training images, their classes and thumbnails, after the last epoch
    proj = run / "tb" / "00002" / "h"
    h = np.loadtxt(proj / "tensors.tsv", delimiter="\t")
    assert h.shape == (96, 32)
    assert len((proj / "metadata.tsv").read_text().splitlines()) == 96
    assert (proj / "sprite.png").stat().st_size > 0 and "tensor_path" in (run / "tb" / "projector_config.pbtxt").read_text()
    # the h written are the encoder's: recompute a few from the run
    from simclr.checkpoint import load_run
    from simclr.config import DataConfig
    from simclr.data import load_dataset
    from simclr.evaluate.features import extract_features

    r = load_run(run)
    ds = load_dataset("synthetic", DataConfig(image_size=16, synthetic_train=96))
    ref = extract_features(r.encoder, ds, 16, torch.device("cpu"), 32, indices=torch.arange(4))
    np.testing.assert_allclose(h[:4], ref.numpy(), rtol=1e-3, atol=1e-4)


def test_without_the_package_the_flag_is_one_line(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["pretrain", *TINY, "--epochs", "1", "--train.tensorboard", "true", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'simclr[tensorboard]'" in err
    assert not (tmp_path / "run").exists()


def test_an_unreadable_image_costs_the_projector_not_the_run(tmp_path, capsys):
    """Streamed images (in_memory_max_side below their size), one of them truncated: training skips it, the final
    checkpoint is written, and the projector that meets it again is left out with a warning."""
    pytest.importorskip("tensorboard")
    from conftest import write_folder

    data = write_folder(tmp_path / "imgs", per_class=12, size=(16, 16))
    bad = sorted(data.rglob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:-40])  # the header stays: it passes the scan, fails to decode
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(data), "--data.in_memory_max_side", "8", "--data.image_size", "16", "--arch",
                 "resnet18", "--width", "0.0625", "--batch-size", "8", "--device", "cpu", "--epochs", "1",
                 "--train.progress", "false", "--train.tensorboard", "true", "--out", str(run)]) == 0
    assert (run / "checkpoint.pt").is_file() and (run / "encoder.safetensors").is_file()
    assert "no embedding projector" in capsys.readouterr().err
