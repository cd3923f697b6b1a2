"""The Python API for your own loop (issue 14, check 2): the names ``from simclr import ...`` offers, and
examples/own_loop.py training on a folder."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import simclr

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_imports_and_is_documented():
    doc = (ROOT / "docs" / "api.md").read_text()
    for name in simclr.__all__:
        assert getattr(simclr, name) is not None
        assert f"`{name}" in doc, f"{name} is not in docs/api.md"


def test_import_simclr_loads_no_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, simclr; print('torch' in sys.modules)"], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr


@pytest.mark.slow
def test_own_loop_example_trains_on_a_folder(tmp_path):
    """examples/own_loop.py, 20 steps on the synthetic set written as PNG files: the loss goes down."""
    from PIL import Image

    from simclr.data.synthetic import synthetic_images

    ds = synthetic_images(128, seed=0, size=32)
    for i in range(len(ds)):
        folder = tmp_path / "imgs" / ds.classes[int(ds.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    assert (ROOT / "examples" / "own_loop.py").read_text().count("\n") < 80
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "own_loop.py"), str(tmp_path / "imgs"), "--steps", "20",
                        "--batch-size", "32", "--width", "0.125", "--out", str(tmp_path / "enc.pt")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    losses = [float(m) for m in re.findall(r"loss ([0-9.]+)", r.stdout)]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    # what it saved loads into this package's (and torchvision's) ResNet-18 by name
    import torch

    enc = simclr.resnet18(width=0.125, cifar_stem=True)
    enc.load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True))


def test_the_version_is_reported_and_recorded_in_every_run(tmp_path, capsys):
    from simclr.checkpoint import load_checkpoint
    from simclr.cli import main
    from simclr.config import load_config

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"simclr {simclr.__version__}"
    run = tmp_path / "run"
    assert main(["pretrain", "--data", "synthetic", "--data.synthetic_train", "64", "--data.image_size", "16", "--arch",
                 "resnet18", "--width", "0.0625", "--batch-size", "16", "--device", "cpu", "--epochs", "1",
                 "--train.progress", "false", "--out", str(run)]) == 0
    text = (run / "config.yaml").read_text()
    assert text.splitlines()[0] == f"# written by simclr {simclr.__version__}"
    assert load_config(run / "config.yaml").model.width == 0.0625  # still a recipe
    assert load_checkpoint(run)["simclr_version"] == simclr.__version__


def test_the_studies_travel_with_the_package():
    """A wheel holds simclr/study/configs/*.yaml (package data through a link to configs/studies), which is where
    `simclr ablate NAME` looks when run outside the source tree (benchmarks/wheel_check.sh builds and installs one)."""
    import tomllib

    from simclr.study import spec

    packaged = Path(spec.__file__).parent / "configs"
    assert sorted(p.name for p in packaged.glob("*.yaml")) == sorted(p.name for p in (ROOT / "configs" / "studies").glob("*.yaml"))
    assert packaged in spec.STUDY_DIRS
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert data["simclr.study"] == ["configs/*.yaml"]
