"""Progress in log files: plain lines every N steps, never carriage-return frames (issue 14, check 3)."""

import io
import subprocess
import sys

from simclr.train.progress import EpochProgress


def test_plain_progress_prints_every_n_steps_with_the_latest_figures():
    out = io.StringIO()
    p = EpochProgress(total=10, done=0, desc="epoch 1/3", every=4, stream=out)
    for step in range(10):
        if p.prints_next:
            p.set_postfix(loss=f"{step:.1f}")
        p.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[:3] for line in lines] == [["epoch 1/3", "step 4/10", "loss 3.0"], ["epoch 1/3", "step 8/10", "loss 7.0"]]
    quiet = io.StringIO()
    p = EpochProgress(total=10, done=0, desc="e", every=0, stream=quiet)
    for _ in range(10):
        p.update(1)
    assert quiet.getvalue() == ""
    resumed = io.StringIO()  # a resumed epoch counts from where it stopped
    p = EpochProgress(total=10, done=5, desc="e", every=3, stream=resumed)
    for _ in range(5):
        p.update(1)
    assert [line.split("  ")[1] for line in resumed.getvalue().splitlines()] == ["step 6/10", "step 9/10"]


def test_a_pretrain_logged_to_a_file_has_no_carriage_return(tmp_path):
    log = tmp_path / "log"
    cmd = [sys.executable, "-m", "simclr", "pretrain", "--data", "synthetic", "--data.synthetic_train", "96", "--data.image_size",
           "16", "--arch", "resnet18", "--width", "0.0625", "--batch-size", "16", "--device", "cpu", "--epochs", "1",
           "--train.log_every", "2", "--out", str(tmp_path / "run")]
    with open(log, "wb") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_bytes()
    assert r.returncode == 0, text[-2000:]
    assert b"\r" not in text
    lines = text.decode().splitlines()
    assert [ln.split("  ")[1] for ln in lines if ln.startswith("epoch 1/1  step")] == ["step 2/6", "step 4/6"]
    assert any(ln.startswith("epoch 1  loss") for ln in lines)
