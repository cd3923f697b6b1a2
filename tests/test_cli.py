"""End to end through the command line, on tiny synthetic data (seconds each)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_folder
from simclr.cli import main

TINY = ["--data", "synthetic", "--data.synthetic_train", "96", "--data.synthetic_test", "40", "--data.image_size", "16",
        "--arch", "resnet18", "--width", "0.125", "--batch-size", "32", "--device", "cpu", "--train.progress", "false",
        "--monitor.knn_every", "1"]


def test_pretrain_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "2", "--out", str(out), "--loss.temperature", "0.2"]) == 0
    for f in ("config.yaml", "checkpoint.pt", "encoder.safetensors", "metrics.jsonl"):
        assert (out / f).is_file(), f
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for key in ("loss", "contrastive_acc", "lr", "epoch_time", "images_per_sec", "online_acc", "knn_top1"):
        assert key in lines[0], key
    assert "temperature: 0.2" in (out / "config.yaml").read_text()
    assert "cifar_stem: true" in (out / "config.yaml").read_text()  # auto keys are saved resolved

    # kNN of the checkpoint and of a random encoder, JSON last
    capsys.readouterr()
    assert main(["knn", "--checkpoint", str(out), "--train-data", "synthetic", "--test-data", "synthetic:test", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= res["top1"] <= 1 and res["num_test"] == 1000 and res["image_size"] == 16
    assert (out / "knn.json").is_file()
    assert main(["knn", "--random-init", "--arch", "resnet18", "--width", "0.125", "--train-data", "synthetic",
                 "--test-data", "synthetic:test", "--json", "--image-size", "16"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["encoder"] == "random-init"


def test_config_file_and_override_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loss:\n  temperature: 0.7\ntrain:\n  epochs: 5\n")
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(recipe), *TINY, "--epochs", "1", "--out", str(out)]) == 0
    text = (out / "config.yaml").read_text()
    assert "temperature: 0.7" in text and "epochs: 1" in text


def _run_cli(args, cwd=None):
    return subprocess.run([sys.executable, "-m", "simclr", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.slow  # keeps `pytest -m "not slow"` under 90 s; still in make test
@pytest.mark.parametrize("args,msg", [
    (["pretrain", "--data", "/definitely/not/here"], "does not exist"),
    (["pretrain", "--data", "synthetic", "--loss.temprature", "0.1"], "did you mean 'loss.temperature'"),
    (["pretrain", "--data", "synthetic", "--loss.temperature", "0"], "temperature must be > 0"),
    (["pretrain", "--data", "synthetic", "--batch-size", "1"], "batch_size must be >= 2"),
    (["pretrain", "--data", "synthetic", "--arch", "resnet19"], "unknown"),
    (["pretrain", "--data", "synthetic", "--width", "-1"], "width must be > 0"),
    (["pretrain", "--data", "synthetic", "--optim.base_lr", "-1"], "base_lr must be >= 0"),
    (["pretrain", "--data", "synthetic", "--data.synthetic_train", "8", "--batch-size", "16", "--device", "cpu"], "fewer than one batch"),
    (["pretrain", "--data", "synthetic", "--config", "/no/such.yaml"], "not found"),
    (["pretrain", "--data", "synthetic", "--bogus", "1"], "unknown option --bogus"),
    (["knn", "--checkpoint", "/no/run", "--train-data", "synthetic", "--test-data", "synthetic:test"], "no checkpoint"),
])
def test_misuse_exits_2_with_one_line(args, msg):
    r = _run_cli(args)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_resume_after_kill_continues(tmp_path):
    """Acceptance check 7: killed after epoch 3, `--resume` continues from epoch 4."""
    out = tmp_path / "run"
    args = [*TINY, "--data.synthetic_train", "1024", "--monitor.knn_every", "0", "--epochs", "6", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "simclr", "pretrain", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    from simclr.checkpoint import load_checkpoint

    deadline = time.time() + 900  # generous: a loaded CI machine runs this tiny model slowly
    reached = False
    while not reached and time.time() < deadline:
        ck = out / "checkpoint.pt"
        reached = ck.exists() and load_checkpoint(ck)["epoch"] >= 3
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert reached, "the run did not finish epoch 3 within 900 s"
    proc.wait()
    epoch_at_kill = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert epoch_at_kill == 3, "the run should have been killed during epoch 4"
    r = _run_cli(["pretrain", *args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "at epoch 3" in r.stdout
    assert "epoch 4 " in r.stdout and "epoch 1 " not in r.stdout
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    final = load_checkpoint(out / "checkpoint.pt")
    assert final["epoch"] == 6 and final["step"] == 6 * (1024 // 32)


def test_resume_without_checkpoint_starts_from_the_beginning(tmp_path):
    """Issue 9: one command can be re-run after any kill, even one before the first checkpoint."""
    r = _run_cli(["pretrain", *TINY, "--epochs", "1", "--out", str(tmp_path / "none"), "--resume"])
    assert r.returncode == 0, r.stderr
    assert "has no checkpoint yet, so the run starts from the beginning" in r.stderr
    assert (tmp_path / "none" / "checkpoint.pt").is_file()


def test_pretrain_on_unlabelled_folder(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(40):
        Image.new("RGB", (16, 16), (i * 5, 255 - i * 5, 0)).save(flat / f"{i}.png")
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(flat), "--arch", "resnet18", "--width", "0.125", "--batch-size", "16", "--epochs", "1",
                 "--device", "cpu", "--train.progress", "false", "--out", str(out)]) == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "online_acc" not in rec and "knn_top1" not in rec


def test_labelled_folder_with_val(tmp_path):
    write_folder(tmp_path / "tr", per_class=24, classes=("a", "b", "c"), size=(16, 16))
    write_folder(tmp_path / "va", per_class=4, classes=("a", "b", "c"), size=(16, 16), seed=1)
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tmp_path / "tr"), "--data.val_path", str(tmp_path / "va"), "--arch", "resnet18",
                 "--width", "0.125", "--batch-size", "16", "--epochs", "1", "--device", "cpu", "--train.progress", "false",
                 "--out", str(out), "--monitor.knn_every", "1"]) == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "knn_top1" in rec and "online_acc" in rec


def test_encoder_from_run_loads_into_fresh_model(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "1", "--out", str(out), "--monitor.knn_every", "0"]) == 0
    from simclr.checkpoint import load_encoder, load_run

    run = load_run(out)
    enc, meta = run.encoder, run.meta
    assert meta["arch"] == "resnet18" and meta["image_size"] == 16 and meta["cifar_stem"] is True
    sd = load_encoder(out / "encoder.safetensors")
    for k, v in enc.state_dict().items():
        assert torch.equal(sd[k], v)


@pytest.mark.slow
def test_more_misuses_exit_2(tmp_path):
    """Issue 5, check 5 (with the list above): every misuse exits 2 with one line and no traceback."""
    from bad_images import make

    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    (texts / "c").mkdir(parents=True)
    (texts / "c" / "a.txt").write_text("x")
    (texts / "c" / "b.jpg").write_text("not a jpeg")
    bad = tmp_path / "bad"
    make(bad, n_good=40)
    flat = tmp_path / "flat"
    flat.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i, i, i)).save(flat / f"{i}.png")
    yaml_bad = tmp_path / "bad.yaml"
    yaml_bad.write_text("loss: [unclosed\n")
    run = tmp_path / "run"
    assert main(["pretrain", *TINY, "--epochs", "1", "--out", str(run), "--monitor.knn_every", "0"]) == 0
    cases = [
        (["pretrain", "--data", str(empty)], "no images found"),
        (["pretrain", "--data", str(texts)], "no readable images"),
        (["pretrain", "--data", str(bad), "--strict", "--device", "cpu"], "unreadable image"),
        (["pretrain", "--data", "synthetic", "--config", str(yaml_bad)], "not valid YAML"),
        (["pretrain", "--data", "synthetic", "--epochs", "abc"], "train.epochs must be an integer"),
        (["pretrain", *TINY, "--epochs", "2", "--out", str(run), "--resume", "--arch", "resnet34"], "model.arch"),
        (["knn", "--checkpoint", str(run), "--train-data", str(flat), "--test-data", str(flat)], "no labels"),
        (["finetune", "--checkpoint", str(run), "--train-data", "synthetic", "--test-data", "synthetic:test", "--label-fraction", "2"],
         "label_fraction"),
        (["frobnicate"], "invalid choice"),
        (["knn", "--train-data", "synthetic", "--test-data", "synthetic:test"], "exactly one of --checkpoint"),
    ]
    if not torch.cuda.is_available():
        cases.append((["pretrain", "--data", "synthetic", "--device", "cuda"], "no CUDA GPU"))
    for args, msg in cases:
        r = _run_cli(args)
        assert r.returncode == 2, (args, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


@pytest.mark.slow
def test_bad_images_are_skipped_and_listed(tmp_path):
    """Issue 5, check 1: one file of each bad kind beside 200 good images."""
    from bad_images import make

    data = tmp_path / "data"
    unreadable = make(data, n_good=200)
    out = tmp_path / "run"
    r = _run_cli(["pretrain", "--data", str(data), "--arch", "resnet18", "--width", "0.125", "--batch-size", "64", "--epochs", "1",
                  "--device", "cpu", "--train.progress", "false", "--monitor.knn_every", "0", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    listed = sorted(line.split("\t")[0] for line in (out / "bad_files.txt").read_text().splitlines())
    assert listed == unreadable
    assert r.stderr.count("warning: skipped 4 unreadable") == 1
    # the readable odd formats (CMYK, 16-bit, palette, RGBA, 1x1, EXIF-rotated) were kept: 200 + 6 images
    from simclr.data import load_folder

    ds = load_folder(data)
    assert len(ds) == 206 and len(ds.bad) == 4
    assert all(Path(p).name != "zero.jpg" for p in ds.paths)
    # labels stay with their files
    assert all(ds.classes[int(y)] == Path(p).parent.name for p, y in zip(ds.paths, ds.labels))
    r = _run_cli(["pretrain", "--data", str(data), "--strict", "--device", "cpu", "--out", str(tmp_path / "strict")])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert unreadable[0] in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_streamed_folder_with_broken_files_trains_at_224(tmp_path):
    """Issue 8, check 4: 120 px JPEGs (streamed, trained at 224 px by a ResNet-18 of width 0.125, the shape that
    crashed oneDNN) with one file truncated after a valid header and one empty file: the run finishes and
    bad_files.txt lists both."""
    from bad_images import cut_after_header, write_jpeg

    data = tmp_path / "photos"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(12):
            write_jpeg(data / c / f"{i:02d}.jpg", size=(120, 120), seed=i + (100 if c == "b" else 0))
    truncated = cut_after_header(data / "a" / "05.jpg")
    empty = data / "b" / "empty.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "simclr", "pretrain", "--data", str(data), "--arch", "resnet18", "--width", "0.125",
                        "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--out", str(out), "--train.progress", "false",
                        "--monitor.knn_every", "0", "--data.num_workers", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "image_size: 224" in (out / "config.yaml").read_text()
    listed = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "bad_files.txt").read_text().splitlines()}
    assert set(listed) == {str(truncated), str(empty)}, listed
    assert json.loads((out / "metrics.jsonl").read_text())["step"] == 24 // 8  # 24 indexed (the empty file is dropped at indexing): every step ran


def test_a_selective_kernel_run_is_rebuilt_by_every_command(tmp_path, capsys):
    """model.sk_ratio / model.tf_padding reach the run's encoder and come back from its folder."""
    from simclr.checkpoint import load_run
    from simclr.model.resnet import SelectiveKernelConv, TFMaxPool2d

    out = tmp_path / "sk"
    assert main(["pretrain", *TINY, "--arch", "resnet50", "--data.image_size", "40", "--model.sk_ratio", "0.0625",
                 "--model.tf_padding", "true", "--epochs", "1", "--out", str(out)]) == 0
    run = load_run(out)
    assert run.meta["sk_ratio"] == 0.0625 and isinstance(run.encoder.layer1[0].conv2, SelectiveKernelConv)
    assert isinstance(run.encoder.maxpool, TFMaxPool2d)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(out), "--format", "torchvision", "--out", str(tmp_path / "tv.pt")]) == 2
    assert "selective-kernel" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(out), "--format", "safetensors", "--out", str(tmp_path / "e.safetensors")]) == 0


def test_argument_errors_answer_without_loading_torch():
    """A mistyped command, key or value, a missing recipe and --help are answered before torch is imported (a second
    saved on every typo), with the same one-line error and status 2; a user error raised after torch loaded (here a
    missing run folder) is still one line."""
    code = """if True:
        import contextlib, io, sys
        from simclr.cli import main
        for argv in (["frobnicate"], ["pretrain", "--data", "synthetic", "--epochs", "abc"],
                     ["pretrain", "--data", "synthetic", "--loss.temprature", "0.1"], ["pretrain", "--config", "no.yaml"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except SystemExit as e:
                    rc = e.code
            assert rc == 2 and len(err.getvalue().strip().splitlines()) == 1, (argv, rc, err.getvalue())
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["pretrain", "--help"])
            except SystemExit as e:
                assert e.code == 0
        assert "torch" not in sys.modules, "torch was imported"
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["knn", "--checkpoint", "no/such/run", "--train-data", "synthetic", "--test-data", "synthetic:test"])
        assert rc == 2 and "torch" in sys.modules and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    """
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
