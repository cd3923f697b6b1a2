"""loss.name supervised: Table 1's baseline, the same views trained with labels through a classifier on h."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import simclr_model, tiny_config, write_folder

from simclr.config import ConfigError, validate
from simclr.data import DataError


def test_the_loss_is_the_classifiers_cross_entropy_and_trains_the_encoder():
    torch.manual_seed(0)
    m = simclr_model(num_classes=3, loss_name="supervised", head_num_layers=0).train()
    x1, x2 = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    y = torch.tensor([0, 2, 1, 2])
    out = m(x1, x2, y)
    h = m.encoder(torch.cat((x1, x2)))
    logits = m.online(h)
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, y.repeat(2)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["contrastive_acc"], (logits.argmax(1) == y.repeat(2)).float().mean())
    out["loss"].backward()
    assert m.encoder.conv1.weight.grad.abs().sum() > 0  # unlike the online probe, its gradient reaches the encoder
    with pytest.raises(ValueError, match="labels"):
        m(x1, x2, None)
    with pytest.raises(ValueError, match="labelled"):
        simclr_model(num_classes=0, loss_name="supervised", head_num_layers=0)


def test_the_online_probe_still_does_not_reach_the_encoder():
    m = simclr_model(num_classes=3).train()
    x = torch.rand(4, 3, 16, 16)
    h = m.encoder(torch.cat((x, x)))
    ce, _ = m.online_loss(h, torch.tensor([0, 1, 2, 0]))
    ce.backward()
    assert m.encoder.conv1.weight.grad is None


@pytest.mark.parametrize("keys,match", [
    ({"loss__name": "supervised"}, "head.num_layers 0"),
    ({"loss__name": "supervised", "head__num_layers": 0, "train__chunk_size": 8}, "chunk_size"),
])
def test_supervised_settings_that_cannot_work_are_one_line(tmp_path, keys, match):
    with pytest.raises(ConfigError, match=match) as e:
        validate(tiny_config(tmp_path / "r", **keys))
    assert "\n" not in str(e.value)


def test_supervised_pretraining_learns_the_labels(tmp_path):
    from simclr.train import pretrain

    data = write_folder(tmp_path / "data", per_class=16, classes=("a", "b"), size=(16, 16))
    # class b is bright, class a dark: learnable from the labels alone
    from PIL import Image
    for p in (data / "b").iterdir():
        Image.eval(Image.open(p), lambda v: 160 + v // 3).save(p)
    for p in (data / "a").iterdir():
        Image.eval(Image.open(p), lambda v: v // 3).save(p)
    cfg = tiny_config(tmp_path / "run", data__path=str(data), loss__name="supervised", head__num_layers=0, train__epochs=6,
                      augment__color=False, augment__grayscale=False)
    pretrain(cfg, log=lambda *_: None)
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["contrastive_acc"] >= 0.9 and recs[-1]["loss"] < recs[0]["loss"]
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert any(k.startswith("online.") for k in state["model"])


def test_supervised_pretraining_needs_labels(tmp_path):
    from simclr.train import pretrain

    flat = tmp_path / "flat"
    write_folder(flat, per_class=8, classes=("a",), size=(16, 16))
    for p in (flat / "a").iterdir():
        p.rename(flat / p.name)
    (flat / "a").rmdir()
    with pytest.raises(DataError, match="has none") as e:
        pretrain(tiny_config(tmp_path / "run", data__path=str(flat), loss__name="supervised", head__num_layers=0),
                 log=lambda *_: None)
    assert "\n" not in str(e.value)


def test_the_classifier_trains_with_the_encoder_at_the_full_rate(tmp_path):
    """Under the supervised loss the classifier is in the encoder's optimiser groups (LARS, the full learning rate),
    not in the online probe's group at a tenth of it; with the contrastive losses it stays in the probe's group."""
    from simclr.config import resolve
    from simclr.data import load_dataset
    from simclr.train.trainer import Trainer

    def groups(**keys):
        cfg = tiny_config(tmp_path / "r", **keys)
        data = load_dataset("synthetic", cfg.data)
        t = Trainer(resolve(cfg, 16), data, None, log=lambda *_: None)
        online = {id(p) for p in t.model.online.parameters()}
        return [g.get("lr_mult", 1.0) for g in t.optimizer.param_groups if any(id(p) in online for p in g["params"])]

    assert set(groups(loss__name="supervised", head__num_layers=0)) == {1.0}
    assert groups() == [0.1]
    with pytest.raises(ValueError, match="head.num_layers 0"):
        simclr_model(num_classes=3, loss_name="supervised")
