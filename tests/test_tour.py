"""docs/tour.md stays true: its pictures exist, and its helper scripts still do what the text says."""

import json
import re
import subprocess
import sys
from pathlib import Path

from simclr.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_every_picture_of_the_tour_exists_and_make_sh_draws_it():
    text = (ROOT / "docs" / "tour.md").read_text()
    pictures = re.findall(r"\]\((tour/[^)]+\.png)\)", text)
    assert len(pictures) >= 8
    make = (ROOT / "docs" / "tour" / "make.sh").read_text()
    for p in pictures:
        assert (ROOT / "docs" / p).is_file(), p
        assert f"/{Path(p).name}" in make, f"make.sh does not draw {p}"


def test_the_collapse_and_temperature_scripts(tiny_run, tmp_path, capsys):
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "tour" / "collapse.py"), str(tiny_run), str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert main(["analyze", "--checkpoint", str(tmp_path / "c"), "--data", "synthetic:test", "--max-images", "200",
                 "--out", str(tmp_path / "a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["collapsed"] is True
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "tour" / "temperature.py"), str(tiny_run), str(tmp_path / "t.png")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    shares = [float(x) for x in re.findall(r"get ([0-9.]+)% of the gradient", r.stdout)]
    assert len(shares) == 4 and shares == sorted(shares, reverse=True)  # lower tau, larger share
    assert (tmp_path / "t.png").stat().st_size > 0
