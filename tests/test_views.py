"""``simclr views``: the training views of the first images, exactly as pretraining computes them (seconds in all)."""

import dataclasses
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclr.cli import main
from simclr.config import ViewsConfig, all_keys, config_from_flat
from simclr.views import pretrain_config, to_uint8

SYNTH = ["--data", "synthetic", "--data.synthetic_train", "64", "--data.image_size", "16", "--batch-size", "16",
         "--device", "cpu"]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _band_folder(root: Path, n: int, size=(400, 300), band: int = 30) -> Path:
    """JPEGs of a mid-grey texture with a pure red band of ``band`` pixels at the left and right edges."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    w, h = size
    for i in range(n):
        a = rng.integers(100, 156, (h, w, 3), dtype=np.uint8)
        a[:, :band] = a[:, w - band :] = (255, 0, 0)
        Image.fromarray(a).save(root / f"{i:03d}.jpg", quality=90)
    return root


def _trainer_views(flat: dict, tmp_path: Path, steps: int):
    """The views a Trainer built on the same config feeds its model at steps 0..steps-1 (uint8 (B*steps, 2, 3, S, S))."""
    from simclr.train import Trainer
    from simclr.train.pretrain import load_training_data

    flat = {"model.arch": "resnet18", "model.width": 0.125, "monitor.knn_every": 0, "train.progress": False,
            "train.out": str(tmp_path / "run"), **flat}
    cfg, train, _ = load_training_data(pretrain_config(config_from_flat(flat, cls=ViewsConfig)))
    tr = Trainer(cfg, train, log=lambda *_: None)
    seen = []

    def record(v1, v2, labels):  # what the model would get; the forward and backward passes are beside the point
        seen.append(torch.stack((v1, v2), 1).detach().cpu())
        return {"loss": torch.zeros(())}

    tr.forward_backward = record
    for _, (x, y, _) in zip(range(steps), tr.batches.epoch(0)):
        tr.train_step(x, y)
    assert not (tmp_path / "run").exists()  # building a Trainer creates no run folder
    return to_uint8(torch.cat(seen)).numpy()


def test_band_edges_appear_in_streamed_views(tmp_path, capsys):
    """The issue's check: large streamed images are cropped from their full frame, so the red bands at the left and
    right edges of 400x300 photos show up in a good share of the views (not in 0%, as a centre square would give)."""
    data = _band_folder(tmp_path / "band", 32)
    out = tmp_path / "views"
    assert main(["views", "--data", str(data), "--out", str(out), "--n", "500", "--data.image_size", "224",
                 "--augment.color", "false", "--augment.grayscale", "false", "--batch-size", "8",
                 "--data.num_workers", "0", "--device", "cpu", "--rows", "4", "--json"]) == 0
    stdout = capsys.readouterr().out
    assert "note: epoch 0 has 32 images" in stdout  # --n 500 is cut to epoch 0, with a note
    res = json.loads(stdout.strip().splitlines()[-1])
    assert (res["n"], res["image_size"], res["streamed"], res["steps"], res["shown"]) == (32, 224, True, 4, 4)
    views = np.load(out / "views.npy")
    assert views.dtype == np.uint8 and views.shape == (32, 2, 3, 224, 224)
    r, g, b = (views[:, :, c].astype(int) for c in range(3))
    red = ((r > 200) & (g < 60) & (b < 60)).reshape(32 * 2, -1)
    share = float((red.sum(1) >= 20).mean())  # views with a visible piece of band (>= 20 band pixels; blur softens edges)
    print(f"views with band pixels: {share:.1%}")
    # The check. Measured: 37.5% (seed 0); 30-47% over seeds 0-9 (38% on average).
    assert share >= 0.2, share
    with Image.open(out / "views.png") as im:
        im.load()
        assert im.mode == "RGB" and im.size[0] == 3 * 224 + 16 and im.size[1] > 4 * 224


def test_in_memory_views_match_the_trainer(tmp_path, capsys):
    """Synthetic (in memory): shapes, dtype, the PNG, and the views equal those the Trainer computes at steps 0, 1, 2
    with the same seed (n = 40 spans two and a half batches of 16)."""
    out = tmp_path / "o"
    assert main(["views", *SYNTH, "--seed", "3", "--n", "40", "--out", str(out), "--json",
                 "--train.out", str(tmp_path / "run")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (res["n"], res["image_size"], res["streamed"], res["steps"], res["shown"]) == (40, 16, False, 3, 32)
    assert res["png"] == str(out / "views.png") and res["npy"] == str(out / "views.npy")
    views = np.load(out / "views.npy")
    assert views.dtype == np.uint8 and views.shape == (40, 2, 3, 16, 16)
    assert sorted(p.name for p in out.iterdir()) == ["views.npy", "views.png"]  # no temporary files left
    assert not (tmp_path / "run").exists()  # train.out is never created
    with Image.open(out / "views.png") as im:
        im.load()
        assert im.size[0] == 3 * 96 + 16  # 16 px views drawn 6x larger
    flat = {"data.path": "synthetic", "data.synthetic_train": 64, "data.image_size": 16, "train.batch_size": 16,
            "train.device": "cpu", "train.seed": 3}
    expected = _trainer_views(flat, tmp_path, steps=3)
    np.testing.assert_array_equal(views, expected[:40])
    assert not np.array_equal(views[:, 0], views[:, 1])  # two different views


def test_streamed_views_match_the_trainer(tmp_path):
    """A streamed folder (images over data.in_memory_max_side): the loader-side crops and the batched rest are the
    Trainer's, step by step, through DataLoader workers too."""
    data = _band_folder(tmp_path / "img", 12, size=(120, 100), band=10)
    out = tmp_path / "o"
    args = ["views", "--data", str(data), "--out", str(out), "--n", "10", "--data.image_size", "32", "--batch-size", "4",
            "--device", "cpu", "--seed", "5"]
    assert main([*args, "--data.num_workers", "0"]) == 0
    views = np.load(out / "views.npy")
    assert views.shape == (10, 2, 3, 32, 32)
    flat = {"data.path": str(data), "data.image_size": 32, "train.batch_size": 4, "train.device": "cpu", "train.seed": 5,
            "data.num_workers": 0}
    np.testing.assert_array_equal(views, _trainer_views(flat, tmp_path, steps=3)[:10])
    assert main([*args, "--data.num_workers", "2"]) == 0  # the same views from worker processes
    np.testing.assert_array_equal(np.load(out / "views.npy"), views)


def test_recipe_file_and_existing_folder(tmp_path, capsys):
    """A pretrain recipe works as it is; an existing --out folder is written into, its other files kept."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  path: synthetic\n  synthetic_train: 32\n  image_size: 16\ntrain:\n  batch_size: 8\n"
                      "  device: cpu\n  out: runs/never\nmodel:\n  arch: resnet18\n")
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["views", "--config", str(recipe), "--out", str(out), "--n", "3"]) == 0
    assert np.load(out / "views.npy").shape == (3, 2, 3, 16, 16)
    assert (out / "mine.txt").read_text() == "keep"
    assert not Path("runs/never").exists()


@pytest.mark.parametrize("args,msg", [
    (["--data", "DIR/missing", "--out", "OUT"], "does not exist"),
    (["--out", "OUT"], "--data is required"),
    (["--data", "synthetic"], "--out is required"),
    ([*SYNTH, "--out", "OUT", "--n", "0"], "views.n must be >= 1"),
    ([*SYNTH, "--out", "OUT", "--n", "-3"], "views.n must be >= 1"),
    ([*SYNTH, "--out", "OUT", "--n", "many"], "views.n must be an integer"),
    ([*SYNTH, "--out", "OUT", "--rows", "0"], "views.rows must be >= 1"),
    ([*SYNTH, "--out", "OUT", "--augment.colour", "false"], "did you mean 'augment.color'"),
    ([*SYNTH, "--out", "OUT", "--views.nn", "3"], "did you mean 'views.n'"),
    ([*SYNTH, "--out", "OUT", "--augment.blur_p", "2"], "augment.blur_p must be <= 1"),
    ([*SYNTH, "--out", "OUT", "--batch-size", "100"], "fewer than one batch"),
    ([*SYNTH, "--out", "FILE"], "is a file"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, args, msg):
    (tmp_path / "file").write_text("not a folder")
    args = [str(tmp_path / "o") if a == "OUT" else str(tmp_path / "file") if a == "FILE" else
            a.replace("DIR", str(tmp_path)) for a in args]
    assert main(["views", *args]) == 2
    assert msg in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written
    assert (tmp_path / "file").read_text() == "not a folder"


def test_config_views_lists_every_key(capsys):
    assert main(["config", "views"]) == 0
    out = capsys.readouterr().out
    keys = all_keys(ViewsConfig)
    for key in keys:
        section, name = key.split(".")
        assert f"\n  {name}: " in out and f"\n{section}:" in out, key
    assert out.count("  # ") == len(keys)
    # the pretrain sections, unchanged, plus the views section
    from simclr.config import Config

    assert [f.name for f in dataclasses.fields(ViewsConfig)] == [f.name for f in dataclasses.fields(Config)] + ["views"]
    for f in dataclasses.fields(Config):
        assert typing.get_type_hints(ViewsConfig)[f.name] is typing.get_type_hints(Config)[f.name]


def _probe_cases():
    """One out-of-range value for every numeric key of views (the pretrain keys included), as test_config_table does
    for the commands of COMMAND_CONFIGS."""
    from test_config_table import _LEGACY_AUTO, PROBES, _invalid, _numeric

    for sec in dataclasses.fields(ViewsConfig):
        hints = typing.get_type_hints(sec.default_factory)
        for f in dataclasses.fields(sec.default_factory):
            kind = _numeric(hints[f.name])
            bad = [t for t, v in PROBES.items() if kind and _LEGACY_AUTO.get((sec.name, f.name)) != v
                   and _invalid(kind, v, dict(f.metadata))]
            if bad:
                shown = bad[-1] if typing.get_origin(hints[f.name]) is not tuple else f"[{bad[-1]}, {bad[-1]}]"
                yield pytest.param(f"{sec.name}.{f.name}", shown, id=f"{sec.name}.{f.name}={bad[-1]}")


@pytest.mark.parametrize("key,value", list(_probe_cases()))
def test_out_of_range_keys_exit_2_before_any_work(key, value, tmp_path, capsys):
    assert main(["views", "--data", "synthetic", "--out", str(tmp_path / "o"), f"--{key}", value]) == 2
    assert key in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_write_views_takes_a_pretrain_config(tmp_path):
    from simclr.config import Config
    from simclr.views import write_views

    cfg = config_from_flat({"data.path": "synthetic", "data.synthetic_train": 32, "data.image_size": 16,
                            "train.batch_size": 8, "train.device": "cpu"}, cls=Config)
    lines = []
    res = write_views(cfg, tmp_path / "a" / "b", 5, log=lines.append, rows=2)
    assert (res["n"], res["shown"], res["steps"], res["streamed"]) == (5, 2, 1, False)
    assert np.load(tmp_path / "a" / "b" / "views.npy").shape == (5, 2, 3, 16, 16)
    assert any("views.png shows 2" in line for line in lines)
