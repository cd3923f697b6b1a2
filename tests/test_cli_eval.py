"""Evaluation commands share pretrain's configuration system: --config FILE, dotted keys, one-line errors."""

import json

import pytest

from simclr.cli import main

DATA = ["--train-data", "synthetic", "--test-data", "synthetic:test"]


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args,msg", [
    (["knn", "CKPT", *DATA, "--k", "0"], "knn.k must be >= 1"),
    (["knn", "CKPT", *DATA, "--knn.k", "-5"], "knn.k must be >= 1"),
    (["knn", "CKPT", *DATA, "--temperature", "nan"], "knn.temperature must be a finite number"),
    (["knn", "CKPT", *DATA, "--batch-size", "0"], "eval.batch_size must be >= 1"),
    (["knn", "CKPT", *DATA, "--image-size", "-1"], "data.image_size must be >= 1"),
    (["knn", "CKPT", *DATA, "--device", "meta"], "is not a device"),
    (["knn", "CKPT", *DATA, "--knn.kk", "3"], "did you mean 'knn.k'"),
    (["knn", "--random-init", "--width", "0", *DATA], "encoder.width must be > 0"),
    (["knn", "--random-init", "--arch", "vgg16", *DATA], "encoder.arch 'vgg16' is unknown"),
    (["knn", "--random-init", "CKPT", *DATA], "exactly one of --checkpoint"),
    (["linear", "CKPT", *DATA, "--solver", "lbfgs", "--grid", "0"], "linear.grid must be >= 1"),
    (["linear", "CKPT", *DATA, "--val-fraction", "1"], "linear.val_fraction must be < 1"),
    (["linear", "CKPT", *DATA, "--lr", "inf"], "linear.lr must be a finite number"),
    (["linear", "CKPT", *DATA, "--solver", "adam"], "linear.solver must be one of sgd, lbfgs"),
    (["finetune", "CKPT", *DATA, "--epochs", "0"], "finetune.epochs must be >= 1"),
    (["finetune", "CKPT", *DATA, "--finetune.lr", "-1"], "finetune.lr must be > 0"),
    (["finetune", "CKPT", *DATA, "--batch-size", "1", "--out", "OUT"],
     "fine-tuning trains BatchNorm layers on batch statistics and needs --batch-size 2 or more, got 1"),
    (["distill", "--teacher", "OUT", "--data", "synthetic", "--test-data", "synthetic:test", "--batch-size", "1", "--out", "OUT"],
     "the student trains BatchNorm layers on batch statistics and needs --batch-size 2 or more, got 1"),
    (["embed", "CKPT", "--data", "synthetic", "--out", "OUT", "--batch-size", "0"], "eval.batch_size must be >= 1"),
    (["embed", "--data", "synthetic", "--out", "OUT"], "--checkpoint RUN is required"),
    (["export", "CKPT", "--format", "jpeg", "--out", "OUT"], "export.format must be one of"),
    (["export", "CKPT", "--format", "onnx"], "--out is required"),
    (["analyze", "CKPT", "--data", "synthetic", "--out", "OUT", "--max-images", "1"], "analyze.max_images must be >= 10"),
    (["analyze", "CKPT", "--data", "synthetic", "--out", "OUT", "--analyze.max_images", "many"], "must be an integer"),
])
def test_bad_evaluation_values_exit_2_with_one_line(tiny_run, tmp_path, capsys, args, msg):
    args = [a for x in args for a in (["--checkpoint", str(tiny_run)] if x == "CKPT" else [str(tmp_path / "o") if x == "OUT" else x])]
    assert main(args) == 2
    assert msg in _err(capsys)
    assert not (tmp_path / "o").exists()  # no work done


def _bomb(levels: int) -> str:
    """A "billion laughs" YAML value for knn.k: each level doubles the previous one by two aliases."""
    items = ["&l0 [1, 1]"] + [f"&l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return "knn:\n  k: [" + ", ".join(items) + "]\n"


@pytest.mark.parametrize("yaml_text,msg", [
    ("knn:\n  k: -1\n", "knn.k must be >= 1"),
    ("knns:\n  k: 5\n", "unknown config section 'knns'; did you mean 'knn'"),
    ("model:\n  arch: resnet18\n", "unknown config section 'model'"),  # a pretrain section is not a knn key
    (_bomb(40), "knn.k must be an integer"),  # expands to 2**40 items: refused without expanding it into the message
    (_bomb(120), "aliases"),
])
def test_bad_evaluation_yaml_exits_2(tiny_run, tmp_path, capsys, yaml_text, msg):
    (tmp_path / "c.yaml").write_text(yaml_text)
    assert main(["knn", "--checkpoint", str(tiny_run), *DATA, "--config", str(tmp_path / "c.yaml")]) == 2
    err = _err(capsys)
    assert msg in err and len(err) < 400


def test_non_utf8_config_exits_2(tiny_run, tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes(b"knn:\n  k: \xff\xfe\n")
    assert main(["knn", "--checkpoint", str(tiny_run), *DATA, "--config", str(tmp_path / "c.yaml")]) == 2
    assert "not UTF-8" in _err(capsys)


def test_evaluation_config_file_and_dotted_keys(tiny_run, tmp_path, capsys):
    """A YAML file sets the keys, a dotted key overrides it, a short flag overrides the file: the result says so."""
    (tmp_path / "knn.yaml").write_text("knn:\n  k: 7\n  temperature: 0.3\ndata:\n  max_per_class: 5\n")
    assert main(["knn", "--checkpoint", str(tiny_run), *DATA, "--config", str(tmp_path / "knn.yaml"),
                 "--knn.temperature", "0.2", "--eval.out", str(tmp_path / "res"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["k"], res["temperature"], res["num_train"], res["num_test"]) == (7, 0.2, 50, 50)
    assert json.loads((tmp_path / "res" / "knn.json").read_text())["k"] == 7


@pytest.mark.parametrize("command", sorted(__import__("simclr.config", fromlist=["COMMAND_CONFIGS"]).COMMAND_CONFIGS))
def test_config_command_lists_every_key(command, capsys):
    from simclr.config import COMMAND_CONFIGS, all_keys

    assert main(["config", command]) == 0
    out = capsys.readouterr().out
    for key in all_keys(COMMAND_CONFIGS[command]):
        section, name = key.split(".")
        assert f"\n  {name}: " in out and f"\n{section}:" in out, key
    assert out.count("  # ") == len(all_keys(COMMAND_CONFIGS[command]))  # one comment per key
