"""The loader benchmark runs end to end on a few small JPEGs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_loader_benchmark_runs(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "other.jpg")  # filtered out
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--data", str(tmp_path), "--repeat", "1",
                        "--sizes", "200x150", "--image-size", "32"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(res["images_per_sec"]) == {"new", "baseline", "center"}
    assert all(v > 0 for v in res["images_per_sec"].values()) and res["ratio"] > 0
    assert res["images"] == 4 and res["image_size"] == 32 and res["threads"] == 1
    # crops of at least 64 px for 32 px views: most decodes run at a reduced scale, and are counted
    assert 0 < res["new_decode_scale"]["reduced_fraction"] <= 1 and res["new_decode_scale"]["mean_scale"] < 1
