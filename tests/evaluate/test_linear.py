"""Linear evaluation: both solvers on tiny data, the split helper, and the CLI."""

import json

import pytest
import torch

from simclr.cli import main
from simclr.data import ImageSet
from simclr.evaluate.linear import linear_eval_lbfgs, linear_eval_sgd, stratified_split
from simclr.model.resnet import resnet18


def _separable(n_per_class=24, size=16, seed=0):
    """Images whose class is their colour: a frozen random encoder separates them linearly."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[220, 30, 30], [30, 220, 30], [30, 30, 220]], dtype=torch.uint8)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    imgs = colours[labels].view(-1, 3, 1, 1).expand(-1, 3, size, size).clone()
    imgs = (imgs.int() + torch.randint(-20, 20, imgs.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return ImageSet(labels=labels, classes=["r", "g", "b"], images=imgs)


def test_stratified_split():
    labels = torch.arange(4).repeat_interleave(10)
    tr, va = stratified_split(labels, 0.2, seed=0)
    assert len(va) == 8 and len(tr) == 32 and set(tr.tolist()).isdisjoint(va.tolist())
    assert torch.bincount(labels[va]).tolist() == [2, 2, 2, 2]


def test_lbfgs_learns_separable_data():
    torch.manual_seed(0)
    enc = resnet18(width=0.125, cifar_stem=True).eval()
    res = linear_eval_lbfgs(enc, _separable(), _separable(seed=1), 16, torch.device("cpu"), num_grid=4, log=lambda *_: None)
    assert res["top1"] == 1.0 and res["solver"] == "lbfgs" and len(res["val_scores"]) == 4


def test_sgd_learns_separable_data():
    torch.manual_seed(0)
    enc = resnet18(width=0.125, cifar_stem=True).eval()
    res = linear_eval_sgd(enc, _separable(), _separable(seed=1), 16, torch.device("cpu"), epochs=15, batch_size=24, base_lr=2.0,
                          log=lambda *_: None)
    assert res["top1"] >= 0.9
    assert all(not p.requires_grad for p in enc.parameters())  # frozen


@pytest.mark.slow
def test_linear_cli(tiny_run, capsys):
    for solver in ("lbfgs", "sgd"):
        assert main(["linear", "--checkpoint", str(tiny_run), "--train-data", "synthetic", "--test-data", "synthetic:test", "--data.synthetic_train", "400", "--data.synthetic_test", "200",
                     "--solver", solver, "--epochs", "1", "--grid", "3", "--json"]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert 0 <= res["top1"] <= res["top5"] <= 1 and res["solver"] == solver
    assert (tiny_run / "linear.json").is_file()
    assert main(["linear", "--random-init", "--arch", "resnet18", "--width", "0.125", "--image-size", "16", "--train-data",
                 "synthetic", "--test-data", "synthetic:test", "--data.synthetic_train", "400", "--data.synthetic_test", "200", "--solver", "lbfgs", "--grid", "2", "--json"]) == 0


def test_the_network_with_projection_is_the_head_after_the_encoder(tiny_run):
    from simclr.checkpoint import load_run
    from simclr.config import ConfigError
    from simclr.evaluate.inputs import EvalInputs

    run = load_run(tiny_run)
    inp = EvalInputs(run.encoder, 16, torch.device("cpu"), None, None, run, {})
    assert inp.network(False) is run.encoder
    net = inp.network(True)
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), run.head(run.encoder(x)))
    assert net.num_features == run.head.out_dim != run.encoder.num_features
    with pytest.raises(ConfigError, match="head"):
        EvalInputs(run.encoder, 16, torch.device("cpu"), None, None, None, {}).network(True)


def test_linear_on_the_projection_keeps_the_h_result(tiny_run, tmp_path, capsys):
    args = ["linear", "--checkpoint", str(tiny_run), "--train-data", "synthetic", "--test-data", "synthetic:test",
            "--data.synthetic_train", "200", "--data.synthetic_test", "100", "--solver", "lbfgs", "--grid", "2", "--json",
            "--out", str(tmp_path)]
    assert main(args) == 0
    h = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*args, "--projection"]) == 0
    z = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (h["features"], z["features"]) == ("h", "z")
    assert json.loads((tmp_path / "linear.json").read_text())["features"] == "h"
    assert json.loads((tmp_path / "linear_z.json").read_text())["top1"] == z["top1"]


def test_projection_without_a_run_is_one_line_before_the_data(tmp_path, capsys):
    rc = main(["linear", "--random-init", "--arch", "resnet18", "--train-data", str(tmp_path / "none"), "--test-data",
               str(tmp_path / "none"), "--projection"])
    err = capsys.readouterr().err
    assert rc == 2 and "--checkpoint" in err and "none" not in err.split("--checkpoint")[0] and err.count("\n") == 1
