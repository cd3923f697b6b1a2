"""benchmarks/gpu_check.sh: its CPU rehearsal (--dry-run) runs every step and prints the one JSON line;
without CUDA and without --dry-run it refuses in one line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
KEYS = {"gpu_check", "ok", "failed", "resnet18_32px", "resnet50_224px", "peak_memory_gib", "loader", "torchrun", "collectives",
        "cifar10", "device", "torch", "cuda", "notes", "work_dir", "wall_s"}
STEP_KEYS = {"encoder_images_per_sec", "step_images_per_sec", "ratio", "ops_per_step", "syncs_per_step", "peak_memory_gib",
             "precision", "compile", "exit_status"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")


def _env(tmp_path):
    return {**os.environ, "BIN": str(Path(sys.executable).parent), "GPU_CHECK_DIR": str(tmp_path / "work"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


@pytest.mark.slow
def test_dry_run_prints_every_figure(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=tmp_path, env=_env(tmp_path), check=False, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert KEYS <= set(res), KEYS - set(res)
    assert res["gpu_check"] == "dry-run" and res["ok"] is True and res["failed"] == []
    for name in ("resnet18_32px", "resnet50_224px"):
        step = res[name]
        assert STEP_KEYS <= set(step), (name, STEP_KEYS - set(step))
        assert step["exit_status"] == 0 and step["step_images_per_sec"] > 0 and step["encoder_images_per_sec"] > 0
        assert step["ops_per_step"] > 100 and step["syncs_per_step"] >= 1  # at least the non-finite check's read
    assert res["resnet50_224px"]["arch"] == "resnet50"
    assert res["loader"]["exit_status"] == 0 and res["loader"]["images_per_sec_per_core"]["new"] > 0
    assert res["collectives"]["exit_status"] == 0 and res["collectives"]["backend"] == "gloo"
    assert res["torchrun"]["exit_status"] == 0 and res["torchrun"]["images_per_sec"] > 0
    assert res["cifar10"]["exit_status"] == 0 and res["cifar10"]["epochs"] == 1 and res["cifar10"]["images_per_sec"][0] > 0
    assert set(res["peak_memory_gib"]) == {"resnet18_32px", "resnet50_224px"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the script would run the full check")
def test_refuses_without_cuda(tmp_path):
    r = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=_env(tmp_path), check=False, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0] and "--dry-run" in lines[0], r.stderr
    assert r.stdout == "" and not (tmp_path / "work").exists()


def _throughput_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("throughput_bench", ROOT / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_sync_proxy_counts_what_would_block_a_gpu():
    tp = _throughput_module()
    from torch.profiler import ProfilerActivity, profile

    mode = tp.HostReads()
    x = torch.arange(6.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof, mode:
        torch.tensor([1.0, 2.0], device=x.device)  # a blocking host->device copy on CUDA
        torch.tensor([1.0, 2.0])  # stays on the host: no sync
        torch.as_tensor(x, device=x.device)  # already a tensor: no host data copied
        x.tolist()
        bool(x.sum() > 0)  # .item()-like read: aten::_local_scalar_dense
        x[x > 2]  # boolean mask: aten::nonzero
        x * 2  # no sync
    assert dict(mode.counts) == {"torch.tensor(host data, device=...)": 1, "Tensor.tolist()": 1}
    names = [e.name for e in prof.events()]
    assert names.count("aten::_local_scalar_dense") == 1 and names.count("aten::nonzero") == 1


@pytest.mark.slow
def test_throughput_matrix_without_compile(tmp_path):
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--matrix", "--no-compile", "--width",
                        "0.125",
                        "--batch-size", "16", "--image-size", "16", "--synthetic-images", "64", "--steps", "1", "--rounds", "1",
                        "--count-steps", "1", "--device", "cpu", "--json", str(out)],
                       check=False, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res == json.loads(out.read_text())
    rows = res["matrix"]
    assert [(row["compile"], row["precision"]) for row in rows] == [(False, "fp32"), (False, "bf16")]
    assert "no-compile" in res["note"] and "compile" in r.stdout
    for row in rows:
        assert row["step_images_per_sec"] > 0 and row["ops_per_step"] > row["top_level_ops_per_step"] > 0
        assert 0 < row["optimizer_ops_per_step"] < row["ops_per_step"]
        # the non-finite check reads one value per step
        assert row["sync_breakdown"].get("aten::_local_scalar_dense", 0) >= 1
