"""Evaluation commands under bad input and faults (issue 9): every failure is one line on stderr and
exit status 2, comes before any work when it can, writes nothing half-way and destroys nothing."""

import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_folder
from simclr.checkpoint import load_checkpoint, save_checkpoint
from simclr.cli import main
from simclr.evaluate.linear import stratified_split

# --------------------------------------------------------------------------------------------- helpers


def one_line_error(capsys, rc, *needles):
    """Assert exit status 2 with exactly one stderr line (no traceback) holding every needle."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and "weights_only" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def write_png(path: bytes, seed: int, size: int = 16) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.fsdecode(path), format="PNG")


def byte_named_folder(root, per_class: int = 6) -> tuple[str, set[bytes]]:
    """A labelled folder whose class and file names are not valid UTF-8; returns it and its files' bytes."""
    base = os.fsencode(str(root))
    files = set()
    for k, cls in enumerate((b"caf\xe9", b"plain")):
        os.makedirs(os.path.join(base, cls))
        for i in range(per_class):
            p = os.path.join(base, cls, b"im\xff%d.png" % i)
            write_png(p, seed=10 * k + i)
            files.add(p)
    return str(root), files


def readonly_location(tmp_path) -> Path:
    """A folder nothing can be created in: a read-only folder, or, for root (who ignores permissions),
    a new entry of sysfs."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK):
        return ro
    ro.chmod(0o755)
    sysfs = Path("/sys/simclr-readonly-test")
    try:
        sysfs.mkdir()
    except OSError:
        return sysfs
    sysfs.rmdir()
    pytest.skip("no read-only location here")


@pytest.fixture
def no_work(monkeypatch):
    """Make reading a checkpoint or data fail loudly: a check that must come first did not."""

    def boom(*_a, **_k):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr("simclr.evaluate.inputs.load_run", boom)
    monkeypatch.setattr("simclr.evaluate.inputs.load_dataset", boom)


@pytest.fixture(scope="module")
def imgs(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("imgs") / "data", per_class=6, classes=("a", "b"), size=(16, 16))


@pytest.fixture(scope="module")
def nan_run(tiny_run, tmp_path_factory):
    """tiny_run with NaN encoder weights."""
    state = load_checkpoint(tiny_run)
    state["model"] = {k: (torch.full_like(v, float("nan")) if k.startswith("encoder.") and v.is_floating_point() else v)
                      for k, v in state["model"].items()}
    out = tmp_path_factory.mktemp("nan") / "run"
    save_checkpoint(state, out / "checkpoint.pt")
    return out


def commands(ckpt, data, out):
    """Each evaluation command with a cheap setting, reading ``ckpt`` and ``data``, writing to ``out``."""
    enc = ["--checkpoint", str(ckpt), "--device", "cpu"]
    tt = ["--train-data", str(data), "--test-data", str(data)]
    return {
        "knn": ["knn", *enc, *tt, "--out", str(out)],
        "linear": ["linear", *enc, *tt, "--epochs", "1", "--out", str(out)],
        "finetune": ["finetune", *enc, *tt, "--epochs", "1", "--out", str(out)],
        "embed": ["embed", *enc, "--data", str(data), "--out", str(out)],
        "export": ["export", "--checkpoint", str(ckpt), "--out", str(out)],
        "analyze": ["analyze", *enc, "--data", str(data), "--out", str(out)],
    }


COMMANDS = ("knn", "linear", "finetune", "embed", "export", "analyze")

# ------------------------------------------------------------------------ 1. names that are not UTF-8


def test_embed_writes_non_utf8_names_as_their_bytes(tiny_run, tmp_path, capsys):
    data, files = byte_named_folder(tmp_path / "data")
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(tiny_run), "--data", data, "--out", str(out), "--device", "cpu"]) == 0
    with open(out / "index.csv", encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(np.load(out / "embeddings.npy")) == 12
    assert {os.fsencode(r["path"]) for r in rows} == files
    assert {os.fsencode(r["class"]) for r in rows} == {b"caf\xe9", b"plain"}
    assert "wrote 12 x" in capsys.readouterr().out


def test_finetune_label_list_keeps_non_utf8_names(tiny_run, tmp_path):
    data, files = byte_named_folder(tmp_path / "data")
    out = tmp_path / "ft"
    assert main(["finetune", "--checkpoint", str(tiny_run), "--train-data", data, "--test-data", data, "--epochs", "1",
                 "--label-fraction", "0.5", "--batch-size", "4", "--device", "cpu", "--out", str(out)]) == 0
    with open(out / "finetune_labels.txt", encoding="utf-8", errors="surrogateescape", newline="") as f:
        rows = list(csv.reader(f, dialect="excel-tab"))
    assert len(rows) == 6 and all(os.fsencode(p) in files for p, _ in rows)
    assert {int(lab) for _, lab in rows} == {0, 1}
    assert json.loads((out / "finetune.json").read_text())["num_labelled"] == 6


def test_analyze_plots_non_utf8_and_dollar_class_names(tiny_run, tmp_path, capsys):
    data, _ = byte_named_folder(tmp_path / "data")
    os.rename(os.path.join(os.fsencode(data), b"plain"), os.path.join(os.fsencode(data), b"a$\\frac$b"))  # mathtext bait
    out = tmp_path / "an"
    rc = main(["analyze", "--checkpoint", str(tiny_run), "--data", data, "--out", str(out), "--device", "cpu", "--json"])
    assert rc == 0, capsys.readouterr().err
    assert (out / "map.png").stat().st_size > 0 and (out / "neighbours.png").stat().st_size > 0
    assert json.loads((out / "analysis.json").read_text())["num_images"] == 12


def test_embed_failure_keeps_the_previous_pair(tiny_run, imgs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(tiny_run), "--data", str(imgs), "--out", str(out), "--device", "cpu"]) == 0
    before = {p: digest(out / p) for p in ("embeddings.npy", "index.csv")}
    real = csv.writer

    class FullDisk:  # the disk fills up after two rows of the index
        def __init__(self, f, **kw):
            self.w, self.n = real(f, **kw), 0

        def writerow(self, row):
            self.n += 1
            if self.n > 2:
                raise OSError(28, "No space left on device")
            self.w.writerow(row)

    monkeypatch.setattr(csv, "writer", FullDisk)
    data2 = write_folder(tmp_path / "other", per_class=5, classes=("x", "y", "z"), size=(16, 16))
    rc = main(["embed", "--checkpoint", str(tiny_run), "--data", str(data2), "--out", str(out), "--device", "cpu"])
    one_line_error(capsys, rc, "index.csv")
    assert {p: digest(out / p) for p in before} == before
    assert sorted(os.listdir(out)) == ["embeddings.npy", "index.csv"]  # no temporaries left


# ------------------------------------------------------------------------------------ 2. output paths


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["under_file", "too_long", "readonly"])
def test_unwritable_output_fails_before_any_work(command, where, tiny_run, imgs, tmp_path, no_work, capsys):
    if where == "under_file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "sub" / ("e.pt" if command == "export" else "out")
    elif where == "too_long":
        out = tmp_path / ("x" * 300)
    else:
        ro = readonly_location(tmp_path)
        out = ro / ("e.pt" if command == "export" else "out")
    rc = main(commands(tiny_run, imgs, out)[command])
    one_line_error(capsys, rc, "cannot write")


@pytest.mark.parametrize("command", ["embed", "analyze"])
def test_folder_output_that_is_a_file_is_refused(command, tiny_run, imgs, tmp_path, no_work, capsys):
    out = tmp_path / "taken"
    out.write_text("precious")
    rc = main(commands(tiny_run, imgs, out)[command])
    one_line_error(capsys, rc, "is a file")
    assert out.read_text() == "precious"


def test_export_to_a_folder_is_refused(tiny_run, tmp_path, no_work, capsys):
    rc = main(commands(tiny_run, None, tmp_path)["export"])
    one_line_error(capsys, rc, "is a folder")


def test_results_into_an_unwritable_run_folder_fail_before_work(tiny_run, imgs, tmp_path, no_work, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tiny_run / "checkpoint.pt", run / "checkpoint.pt")
    real = tempfile.mkstemp

    def readonly_run(*a, dir=None, **k):  # the run folder refuses new files (chmod does not stop root)
        if dir is not None and Path(dir) == run:
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", readonly_run)
    for command in ("knn", "linear"):  # no --out: the result goes into the run folder
        rc = main([command, "--checkpoint", str(run), "--train-data", str(imgs), "--test-data", str(imgs), "--device", "cpu"])
        one_line_error(capsys, rc, "cannot write into", str(run), "Permission denied")
    assert sorted(os.listdir(run)) == ["checkpoint.pt"]


def test_failed_command_leaves_no_output_folder(nan_run, imgs, tmp_path, capsys):
    out = tmp_path / "new" / "deep"
    rc = main(commands(nan_run, imgs, out)["finetune"])
    one_line_error(capsys, rc, "non-finite")
    assert not (tmp_path / "new").exists()


def test_analyze_out_inside_the_data_folder_is_refused(tiny_run, tmp_path, no_work, capsys):
    data = write_folder(tmp_path / "flat_parent", per_class=6, classes=("a", "b"), size=(16, 16))
    rc = main(commands(tiny_run, data, data / "analysis")["analyze"])
    one_line_error(capsys, rc, "inside the data folder")
    assert not (data / "analysis").exists()


# -------------------------------------------------------------------- 3. export over training files


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns(".lock", "*.json"))
    (run / "checkpoints").mkdir()
    os.link(run / "checkpoint.pt", run / "checkpoints" / "epoch_0001.pt")
    shutil.copy(run / "checkpoint.pt", tmp_path / "renamed.bin")
    (tmp_path / "link.pth").symlink_to(run / "checkpoint.pt")
    return run


@pytest.mark.parametrize("fmt", ["safetensors", "torchvision"])
@pytest.mark.parametrize("target,msg", [("run/checkpoint.pt", "checkpoint.pt"),
                                        ("run/encoder.safetensors", "encoder.safetensors"),
                                        ("run/config.yaml", "config.yaml"),
                                        ("run/checkpoints/epoch_0001.pt", "checkpoints/"),
                                        ("run/checkpoints/epoch_0002.pt", "checkpoints/"),
                                        ("renamed.bin", "training checkpoint"),
                                        ("link.pth", "checkpoint.pt"),
                                        ("elsewhere/checkpoint.pt", "checkpoint.pt")])
def test_export_never_overwrites_training_files(fmt, target, msg, run_copy, tmp_path, capsys):
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    before = {p: digest(p) for p in files}
    rc = main(["export", "--checkpoint", str(run_copy), "--format", fmt, "--out", str(tmp_path / target)])
    one_line_error(capsys, rc, "refusing", msg)
    assert {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()} == before
    assert load_checkpoint(run_copy)["epoch"] >= 0


def test_export_may_replace_an_earlier_export(run_copy, tmp_path):
    out = tmp_path / "enc.pth"
    for _ in range(2):
        assert main(["export", "--checkpoint", str(run_copy), "--format", "torchvision", "--out", str(out)]) == 0
    assert torch.load(out, weights_only=True)["conv1.weight"].ndim == 4


# --------------------------------------------------------------------------- 4. onnx without onnx


def test_onnx_export_without_the_package_says_what_to_install(tiny_run, tmp_path, monkeypatch, no_work, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    out = tmp_path / "enc.onnx"
    rc = main(["export", "--checkpoint", str(tiny_run), "--format", "onnx", "--out", str(out)])
    one_line_error(capsys, rc, "pip install 'simclr[export]'")
    assert not out.exists()


# ------------------------------------------------------------------------------- 5. analyze sizes


def test_analyze_refuses_fewer_than_ten_images(tiny_run, tmp_path, capsys):
    data = write_folder(tmp_path / "three", per_class=3, classes=("a",), size=(16, 16))
    out = tmp_path / "an"
    rc = main(commands(tiny_run, data, out)["analyze"])
    one_line_error(capsys, rc, "at least 10 images", "has 3")
    assert not out.exists()


def test_analyze_max_images_beyond_the_data_uses_all(tiny_run, imgs, tmp_path, capsys):
    out = tmp_path / "an"
    assert main([*commands(tiny_run, imgs, out)["analyze"], "--max-images", "100000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"] == 12


# ------------------------------------------------------------------- 6. broken and diverged checkpoints


@pytest.mark.parametrize("command", COMMANDS)
def test_nan_checkpoint_exits_2_everywhere(command, nan_run, imgs, tmp_path, capsys):
    out = tmp_path / ("e.pt" if command == "export" else "out")
    rc = main(commands(nan_run, imgs, out)[command])
    one_line_error(capsys, rc, "non-finite")
    assert not out.exists()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_or_truncated_checkpoint_exits_2_everywhere(command, damage, tiny_run, imgs, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    raw = (tiny_run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(b"" if damage == "empty" else raw[: len(raw) // 3])
    out = tmp_path / ("e.pt" if command == "export" else "out")
    rc = main(commands(run / "checkpoint.pt", imgs, out)[command])
    one_line_error(capsys, rc, "cannot load checkpoint")
    assert not out.exists()


# ------------------------------------------------------------------------------ 7. data shapes


def test_stratified_split_never_empties_a_class_of_train():
    labels = torch.tensor([0, 0, 1, 1, 2])
    tr, va = stratified_split(labels, 0.9, seed=0)
    assert sorted(labels[tr].tolist()) == [0, 1, 2] and sorted(labels[va].tolist()) == [0, 1]


def test_lbfgs_with_one_image_per_class(tiny_run, imgs, tmp_path, capsys):
    args = ["linear", "--checkpoint", str(tiny_run), "--train-data", str(imgs), "--test-data", str(imgs), "--device", "cpu",
            "--max-per-class", "1", "--solver", "lbfgs", "--out", str(tmp_path / "o")]
    one_line_error(capsys, main(args), "validation split", "--linear.grid 1")
    assert not (tmp_path / "o").exists()
    assert main([*args, "--grid", "1", "--json"]) == 0  # a grid of one needs no split
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["num_train"] == 2 and res["val_top1"] is None


def test_sgd_batch_larger_than_the_data_uses_the_data(tiny_run, imgs, tmp_path, capsys):
    assert main(["linear", "--checkpoint", str(tiny_run), "--train-data", str(imgs), "--test-data", str(imgs), "--device", "cpu",
                 "--epochs", "1", "--batch-size", "4096", "--json", "--out", str(tmp_path / "o")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["batch_size"] == 12 and res["lr"] == pytest.approx(0.1 * 12 / 256)


def test_finetune_one_image_per_class_and_batch_of_one(tiny_run, imgs, tmp_path, capsys):
    base = ["finetune", "--checkpoint", str(tiny_run), "--train-data", str(imgs), "--test-data", str(imgs), "--device", "cpu",
            "--epochs", "1", "--from-head-layer", "1"]
    assert main([*base, "--max-per-class", "1", "--out", str(tmp_path / "ok")]) == 0
    assert len((tmp_path / "ok" / "finetune_labels.txt").read_text().splitlines()) == 2
    capsys.readouterr()
    one_line_error(capsys, main([*base, "--batch-size", "1", "--out", str(tmp_path / "bad")]), "--batch-size 2")
    assert not (tmp_path / "bad").exists()


def test_knn_k_larger_than_the_bank(tiny_run, imgs, tmp_path, capsys):
    assert main(["knn", "--checkpoint", str(tiny_run), "--train-data", str(imgs), "--test-data", str(imgs), "--device", "cpu",
                 "--k", "100000", "--json", "--out", str(tmp_path / "o")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["k_used"] == 12 and 0 <= res["top1"] <= 1


def test_test_set_missing_a_class_is_scored_on_the_training_classes(tiny_run, imgs, tmp_path, capsys):
    test = tmp_path / "test"
    shutil.copytree(imgs / "b", test / "b")  # the training images of class b, so the nearest neighbour is itself
    assert main(["knn", "--checkpoint", str(tiny_run), "--train-data", str(imgs), "--test-data", str(test), "--device", "cpu",
                 "--k", "1", "--json", "--out", str(tmp_path / "o")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["top1"] == 1.0 and res["num_test"] == 6


def test_test_class_unknown_to_training_is_refused(tiny_run, imgs, tmp_path, capsys):
    test = write_folder(tmp_path / "test", per_class=2, classes=("a", "b", "zebra"), size=(16, 16))
    rc = main(["knn", "--checkpoint", str(tiny_run), "--train-data", str(imgs), "--test-data", str(test), "--device", "cpu"])
    one_line_error(capsys, rc, "zebra")


def test_training_data_of_one_class_is_refused(tiny_run, tmp_path, capsys):
    one = write_folder(tmp_path / "one", per_class=4, classes=("a",), size=(16, 16))
    rc = main(["linear", "--checkpoint", str(tiny_run), "--train-data", str(one), "--test-data", str(one), "--device", "cpu",
               "--solver", "lbfgs"])
    one_line_error(capsys, rc, "at least 2")


# --------------------------------------------------------------------------------- 8. found by trying


def test_knn_tiny_temperature_gives_finite_scores_and_the_nearest_neighbour():
    from simclr.evaluate.knn import knn_predict

    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(50, 6, generator=g), torch.randn(20, 6, generator=g)
    labels = torch.randint(0, 5, (50,), generator=g)
    scores = knn_predict(query, bank, labels, 5, k=10, temperature=1e-4)
    assert torch.isfinite(scores).all()
    sims = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).t()
    assert torch.equal(scores.argmax(1), labels[sims.argmax(1)])  # T -> 0: the nearest neighbour decides


def test_unreadable_evaluation_images_are_reported(tiny_run, tmp_path, capsys):
    data = write_folder(tmp_path / "data", per_class=6, classes=("a", "b"), size=(16, 16))
    (data / "a" / "broken.png").write_bytes(b"")
    assert main(["knn", "--checkpoint", str(tiny_run), "--train-data", str(data), "--test-data", str(data), "--device", "cpu",
                 "--out", str(tmp_path / "o")]) == 0
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out


def test_feature_batches_are_capped_by_memory():
    from simclr.evaluate.features import MAX_BATCH_BYTES, _batches

    assert [len(b) for b in _batches(torch.arange(10), 4, 16)] == [4, 4, 2]
    big = _batches(torch.arange(3), 256, 4096)
    assert [len(b) for b in big] == [1, 1, 1] and 3 * 4096 * 4096 * 4 <= MAX_BATCH_BYTES


def test_finetune_diverging_stops_with_one_line(tiny_run, imgs, tmp_path, capsys):
    out = tmp_path / "ft"
    rc = main(["finetune", "--checkpoint", str(tiny_run), "--train-data", str(imgs), "--test-data", str(imgs), "--device", "cpu",
               "--epochs", "3", "--batch-size", "2", "--lr", "1000000", "--label-fraction", "1", "--out", str(out)])
    one_line_error(capsys, rc, "the loss became", "--lr")
    assert not out.exists()


def test_from_head_layer_without_a_head(tiny_run, imgs, tmp_path, capsys):
    state = load_checkpoint(tiny_run)
    state["config"]["head"]["num_layers"] = 0
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("head.")}
    save_checkpoint(state, tmp_path / "headless" / "checkpoint.pt")
    rc = main(["finetune", "--checkpoint", str(tmp_path / "headless"), "--train-data", str(imgs), "--test-data", str(imgs),
               "--device", "cpu", "--from-head-layer", "1", "--out", str(tmp_path / "o")])
    one_line_error(capsys, rc, "has none")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["notes.txt", "photo.png"])
def test_export_never_replaces_a_users_file(tiny_run, tmp_path, capsys, name):
    from simclr.cli import main as cli_main

    target = tmp_path / name
    target.write_bytes(b"precious")
    assert cli_main(["export", "--checkpoint", str(tiny_run), "--format", "safetensors", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "not a safetensors export" in err and len(err.strip().splitlines()) == 1
    assert target.read_bytes() == b"precious"
    assert cli_main(["export", "--checkpoint", str(tiny_run), "--format", "safetensors", "--out", str(tmp_path / "e.safetensors")]) == 0
    assert cli_main(["export", "--checkpoint", str(tiny_run), "--format", "safetensors", "--out", str(tmp_path / "e.safetensors")]) == 0
