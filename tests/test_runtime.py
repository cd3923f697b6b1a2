"""simclr.runtime: the automatic precision and the per-step generators."""

import pytest
import torch

from simclr import runtime


def test_auto_precision_follows_the_hardware(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    monkeypatch.delenv("SIMCLR_CPU_BF16", raising=False)
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: True)
    assert runtime.resolve_precision(cpu, "auto")[0] == "bf16"
    assert "natively" in runtime.resolve_precision(cpu, "auto")[1]
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: False)
    assert runtime.resolve_precision(cpu, "auto") == ("fp32", "auto: no native bf16 on this CPU")
    assert runtime.resolve_precision(cuda, "auto")[0] == "bf16"
    assert runtime.resolve_precision(mps, "auto")[0] == "fp32"
    for p in ("fp32", "bf16", "fp16"):
        assert runtime.resolve_precision(cpu, p) == (p, "as set")
    ctx, p = runtime.autocast_for(cpu, "auto")
    assert p == "fp32" and not isinstance(ctx, torch.autocast)


def test_native_bf16_detection(monkeypatch):
    """The CPU flags decide, and SIMCLR_CPU_BF16=0 (what the test suite sets) turns the detection off."""
    monkeypatch.delenv("SIMCLR_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert runtime.native_bf16_cpu()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not runtime.native_bf16_cpu()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert runtime.native_bf16_cpu()
    monkeypatch.setenv("SIMCLR_CPU_BF16", "0")
    assert not runtime.native_bf16_cpu()
    assert runtime.resolve_precision(torch.device("cpu"), "auto") == ("fp32", "auto: SIMCLR_CPU_BF16=0")


def test_the_trainer_logs_the_automatic_choice(tmp_path, monkeypatch):
    from conftest import tiny_config
    from simclr.train import Trainer
    from simclr.train.pretrain import load_training_data

    monkeypatch.delenv("SIMCLR_CPU_BF16", raising=False)
    monkeypatch.setattr(runtime, "native_bf16_cpu", lambda: True)
    cfg, train, val = load_training_data(tiny_config(tmp_path))
    lines = []
    tr = Trainer(cfg, train, val, log=lines.append)
    assert tr.precision == "bf16" and any(line.startswith("precision bf16 (auto: this CPU") for line in lines)
    lines.clear()
    cfg, train, val = load_training_data(tiny_config(tmp_path, train__precision="fp32"))
    tr = Trainer(cfg, train, val, log=lines.append)
    assert tr.precision == "fp32" and not any(line.startswith("precision") for line in lines)


@pytest.mark.parametrize("ranks", [2, 1000])
def test_step_generators_differ_across_steps_and_ranks(ranks):
    """Every (step, rank) pair gets its own stream: no two ranks of a step, and no rank of two nearby steps,
    draw the same numbers (the first releases' seed formula collided past 131 ranks)."""
    firsts = {}
    for step in range(3):
        for rank in range(ranks):
            g = runtime.step_generator(0, step, rank, torch.device("cpu"))
            firsts[(step, rank)] = torch.randint(0, 2**62, (1,), generator=g).item()
    assert len(set(firsts.values())) == len(firsts)


def test_seeds_of_the_first_131_ranks_are_unchanged():
    """Runs of earlier releases (up to 131 ranks) resume with the draws they started with."""
    for seed, step, rank in ((0, 0, 0), (7, 123, 5), (1, 10**6, 130)):
        g = runtime.step_generator(seed, step, rank, torch.device("cpu"))
        assert g.initial_seed() == ((seed * 1_000_003 + step + 7) * 131 + rank) % 2**63
