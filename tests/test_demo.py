"""The demo and the throughput benchmark run end to end (shortened)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simclr.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_short(tmp_path):
    res = run_demo(out=str(tmp_path / "demo"), device="cpu", epochs=1, log=lambda *_: None)
    assert 0 <= res["trained_top1"] <= 1 and 0 <= res["random_init_top1"] <= 1
    for f in ("metrics.png", "views.png", "demo.json", "encoder.safetensors"):
        assert (tmp_path / "demo" / f).is_file(), f
    assert (tmp_path / "demo" / "views.png").stat().st_size > 5000


@pytest.mark.slow
def test_throughput_benchmark_runs(tmp_path):
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--data", "synthetic", "--width", "0.125",
                        "--batch-size", "16", "--steps", "1", "--rounds", "1", "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["encoder_images_per_sec"] > 0 and res["step_images_per_sec"] > 0 and res["ratio"] > 0
