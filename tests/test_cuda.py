"""Checks that need a CUDA GPU (skipped without one; run them on a GPU machine with ``pytest tests/test_cuda.py``).

CPU-side stand-ins for each live elsewhere (masked augmentation, sync proxies, compile graph counts); these run
the real CUDA paths: kernels, the caching allocator's host synchronisations, cuDNN, Inductor's Triton code.
"""

import warnings

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _aug():
    from simclr.data.augment import SimCLRAugment

    return SimCLRAugment(32, blur_p=0.5, color_strength=1.0, blur_sigma=(0.5, 2.0))


def _draws(aug, b, h, w):
    d = aug.draw(b, h, w, "cpu", torch.Generator().manual_seed(0))
    return d, {k: v.cuda() for k, v in d.items()}


def test_augmentation_on_cuda_equals_cpu_for_the_same_draws(monkeypatch):
    import simclr.data.augment as augment

    aug = _aug()
    x = torch.randint(0, 256, (32, 3, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    cpu_draws, cuda_draws = _draws(aug, 32, 40, 36)
    monkeypatch.setattr(augment, "_indexing_pays", lambda x: False)
    ref = aug.apply(x, cpu_draws)
    out = aug.apply(x.cuda(), cuda_draws)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=0)


def test_compiled_augmentation_on_cuda_equals_eager():
    aug = _aug()
    x = torch.randint(0, 256, (32, 3, 40, 36), dtype=torch.uint8, device="cuda")
    _, d = _draws(aug, 32, 40, 36)
    eager = aug.apply(x, d)
    torch.testing.assert_close(aug.compile()._apply(x, d), eager, atol=2e-5, rtol=0)


@pytest.mark.parametrize("compile_", [False, True])
def test_a_cuda_training_step_synchronises_once(tmp_path, compile_):
    """bf16, channels_last, (compiled): finite loss, and exactly one host synchronisation per step (the
    non-finite check), as torch.cuda.set_sync_debug_mode reports them."""
    from conftest import tiny_config
    from simclr.train import Trainer
    from simclr.train.pretrain import load_training_data

    cfg, train, val = load_training_data(tiny_config(tmp_path, train__device="cuda", train__precision="bf16",
                                                     train__compile=compile_, data__image_size=32,
                                                     train__batch_size=32, data__synthetic_train=128))
    tr = Trainer(cfg, train, val, log=lambda *_: None)
    batches = tr.batches.epoch(0)
    for _ in range(2):  # compilation, cuDNN autotuning, lazy state
        tr.train_step(*next(batches)[:2])
    x, y, _ = next(batches)
    x, y = x.pin_memory(), y.pin_memory()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = tr.train_step(x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert torch.isfinite(out["loss"]).item()
    assert len(syncs) == 1, syncs


def test_fp16_chunked_pretraining_runs(tmp_path):
    import json

    from conftest import tiny_config
    from simclr.train import pretrain

    cfg = tiny_config(tmp_path, train__device="cuda", train__precision="fp16", train__chunk_size=8, train__epochs=2)
    pretrain(cfg, log=lambda *_: None)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["loss"] == r["loss"] and r["loss"] < 1e3 for r in recs)
