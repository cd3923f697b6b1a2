"""Semi-supervised fine-tuning: balanced label subsets, SimCLRv2 head layers, the CLI."""

import json

import pytest
import torch

from simclr.cli import main
from simclr.evaluate.finetune import Classifier, balanced_subset
from simclr.model.head import ProjectionHead
from simclr.model.resnet import resnet18


def test_balanced_subset_is_deterministic_and_balanced():
    labels = torch.arange(5).repeat_interleave(40)
    a = balanced_subset(labels, 0.1, seed=3)
    assert torch.equal(a, balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(a, balanced_subset(labels, 0.1, seed=4))
    assert torch.bincount(labels[a]).tolist() == [4] * 5
    assert len(balanced_subset(labels, 0.001, seed=0)) == 5  # at least one per class
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            balanced_subset(labels, bad, seed=0)


def test_classifier_from_head_layer():
    enc = resnet18(width=0.125, cifar_stem=True)
    head = ProjectionHead(enc.num_features, num_layers=3, hidden_dim=48, out_dim=16)
    m = Classifier(enc, 7, head, head_layers=1)
    assert m.fc.in_features == 48
    assert m(torch.rand(2, 3, 16, 16)).shape == (2, 7)
    assert Classifier(enc, 7).fc.in_features == enc.num_features


def test_finetune_cli(tiny_run, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--checkpoint", str(tiny_run), "--train-data", "synthetic", "--test-data", "synthetic:test", "--data.synthetic_train", "400", "--data.synthetic_test", "200",
                 "--label-fraction", "0.5", "--epochs", "1", "--batch-size", "16", "--from-head-layer", "1", "--out", str(out),
                 "--json"]) == 0
    printed = capsys.readouterr().out
    res = json.loads(printed.strip().splitlines()[-1])
    assert 0 <= res["top1"] <= res["top5"] <= 1 and res["from_head_layer"] == 1
    # 201 labelled images (half of every class, rounded) in batches of 16 for 1 epoch: 12 steps, which finetune calls few
    assert "finetune: 12 steps in all (201 labelled images in batches of 16, 1 epoch(s)) are few" in printed
    chosen = (out / "finetune_labels.txt").read_text().splitlines()
    assert len(chosen) == res["num_labelled"] and chosen[0].startswith("train#")
    assert (out / "finetune.json").is_file()
    # same seed, same labels
    out2 = tmp_path / "ft2"
    assert main(["finetune", "--random-init", "--arch", "resnet18", "--width", "0.125", "--image-size", "16", "--train-data",
                 "synthetic", "--test-data", "synthetic:test", "--data.synthetic_train", "400", "--data.synthetic_test", "200", "--label-fraction", "0.5", "--epochs", "1", "--out", str(out2)]) == 0
    assert (out2 / "finetune_labels.txt").read_text() == (out / "finetune_labels.txt").read_text()


@pytest.mark.parametrize("extra,msg", [(["--label-fraction", "0"], "label_fraction"), (["--label-fraction", "1.5"], "label_fraction"),
                                        (["--from-head-layer", "9"], "from_head_layer")])
def test_finetune_misuse(tiny_run, extra, msg, capsys):
    assert main(["finetune", "--checkpoint", str(tiny_run), "--train-data", "synthetic", "--test-data", "synthetic:test", "--data.synthetic_train", "400", "--data.synthetic_test", "200", *extra]) == 2
    assert msg in capsys.readouterr().err


@pytest.mark.parametrize("few,said", [(12, False), (13, True)])
def test_few_steps_are_pointed_out_below_the_threshold(tiny_run, tmp_path, capsys, monkeypatch, few, said):
    from simclr.evaluate import finetune as ft

    monkeypatch.setattr(ft, "FEW_STEPS", few)
    assert main(["finetune", "--checkpoint", str(tiny_run), "--train-data", "synthetic", "--test-data", "synthetic:test",
                 "--data.synthetic_train", "400", "--data.synthetic_test", "200", "--label-fraction", "0.5", "--epochs", "1",
                 "--batch-size", "16", "--out", str(tmp_path / "ft")]) == 0
    assert ("steps in all" in capsys.readouterr().out) is said
