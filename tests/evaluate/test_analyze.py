"""Representation diagnostics against closed-form cases; collapse detection end to end."""

import json
import math

import pytest
import torch

from simclr.evaluate.analyze import alignment, effective_rank, scaled_std, uniformity
from simclr.checkpoint import load_checkpoint, save_checkpoint
from simclr.cli import main


def test_metrics_closed_forms():
    z = torch.randn(50, 8)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-6)
    assert alignment(z, -z) == pytest.approx(4.0, abs=1e-5)
    assert uniformity(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-9)
    # two antipodal points: ||zi - zj||^2 = 4 -> log exp(-8) = -8
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    assert effective_rank(torch.ones(20, 5)) == 1.0
    iso = torch.eye(6).repeat(10, 1) - 1 / 6
    assert effective_rank(iso) == pytest.approx(5.0, rel=1e-3)  # centred one-hots span 5 dims evenly
    assert scaled_std(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-9)
    g = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert scaled_std(g) == pytest.approx(1.0, abs=0.05)


@pytest.mark.slow  # keeps `pytest -m "not slow"` under 90 s; still in make test
def test_analyze_flags_collapse_only(tiny_run, tmp_path, capsys):
    out = tmp_path / "ok"
    assert main(["analyze", "--checkpoint", str(tiny_run), "--data", "synthetic:test", "--max-images", "300", "--out", str(out), "--json"]) == 0
    ok = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ok["collapsed"] is False
    for f in ("map.png", "neighbours.png", "analysis.json"):
        assert (out / f).is_file()
    # a deliberately collapsed encoder: every output equal
    state = load_checkpoint(tiny_run)
    for k, v in state["model"].items():
        if k.startswith("encoder.") and (k.endswith("conv1.weight") or k.endswith("conv2.weight") or "downsample.0" in k):
            state["model"][k] = torch.zeros_like(v)
    collapsed = tmp_path / "collapsed"
    collapsed.mkdir()
    save_checkpoint(state, collapsed / "checkpoint.pt")
    assert main(["analyze", "--checkpoint", str(collapsed), "--data", "synthetic:test", "--max-images", "300", "--out", str(tmp_path / "bad"), "--json"]) == 0
    bad = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bad["collapsed"] is True and bad["scaled_std_h"] < 1e-3
    assert math.isfinite(bad["uniformity"])
