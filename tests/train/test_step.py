"""The gradient-cached (chunked) step: same gradients as the plain step, a fraction of the memory."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import simclr_model
from simclr.train.step import cached_backward

ROOT = Path(__file__).resolve().parents[2]


def _model():
    torch.manual_seed(0)
    m = simclr_model(loss_temperature=0.2, num_classes=5).double()
    # No batch statistics: BN normalises with its running statistics, so chunks cannot differ.
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.eval()
    return m


@pytest.mark.parametrize("chunk", [4, 5, 16])
def test_same_gradients_as_plain_step(chunk):
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.rand(16, 3, 16, 16, generator=g, dtype=torch.float64), torch.rand(16, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (16,), generator=g)
    a, b = _model(), _model()
    out_a = a(x1, x2, y)
    out_a["loss"].backward()
    out_b = cached_backward(b, x1, x2, y, chunk)
    assert out_b["contrastive_loss"].item() == pytest.approx(out_a["contrastive_loss"].item(), abs=1e-10)
    assert out_b["online_loss"].item() == pytest.approx(out_a["online_loss"].item(), abs=1e-10)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-5, rtol=0, msg=name)


def test_running_statistics_updated_once_per_chunk():
    """BN running statistics move only in the passes with graphs: exactly as two plain training-mode passes
    over the two chunks would move them (the graph-free pass, with momentum 0, leaves them alone)."""
    torch.manual_seed(0)
    m = simclr_model(loss_temperature=0.2)
    ref = copy.deepcopy(m)
    x = torch.rand(8, 3, 16, 16)
    cached_backward(m, x, x.flip(-1), None, 4)
    with torch.no_grad():
        for i in (0, 4):
            ref.embed(x[i : i + 4], x.flip(-1)[i : i + 4])
    for (name, a), b in zip(m.named_buffers(), ref.buffers()):
        if "running" in name:
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert all(bn.momentum == 0.1 for bn in m.modules() if isinstance(bn, torch.nn.BatchNorm2d))  # restored


def _peak(mode):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grad_cache_memory.py"), "--mode", mode, "--batch", "1024",
                        "--chunk", "128"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_chunked_step_uses_under_half_the_memory():
    """Acceptance check 3 of issue 4: batch 1024, chunks of 128, peak memory measured on CPU."""
    plain = _peak("plain")
    # the memory the step adds on top of the process (interpreter, torch, model, inputs); the
    # chunked figure is the lower of two runs, as allocator reuse varies a little between runs
    chunked = min((_peak("chunked") for _ in range(2)), key=lambda r: r["step_mib"])
    assert chunked["step_mib"] < 0.5 * plain["step_mib"], (plain, chunked)
    assert chunked["peak_after_mib"] < plain["peak_after_mib"], (plain, chunked)


def test_trainer_uses_chunks(tmp_path):
    from simclr.config import Config, apply_overrides
    from simclr.train import pretrain

    cfg = apply_overrides(Config(), [("data.path", "synthetic"), ("data.synthetic_train", "64"), ("data.image_size", "16"),
                                     ("model.arch", "resnet18"), ("model.width", "0.125"), ("train.batch_size", "32"),
                                     ("train.chunk_size", "8"), ("train.epochs", "1"), ("train.device", "cpu"),
                                     ("train.progress", "false"), ("train.out", str(tmp_path)), ("monitor.knn_every", "0")])
    pretrain(cfg, log=lambda *_: None)
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert rec["loss"] > 0 and "online_acc" in rec


def test_loss_scale_is_applied_once():
    """fp16's GradScaler multiplies the loss by S: every gradient of the cached step (encoder, head and online
    probe) must come out S times larger, not S**2 (the cached projection gradients already carry S)."""
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64), torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    a = simclr_model(loss_temperature=0.2, num_classes=5).double()
    b = copy.deepcopy(a)
    cached_backward(a, x1, x2, y, 4)
    cached_backward(b, x1, x2, y, 4, scale=lambda t: t * 8.0)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pb.grad, 8.0 * pa.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_fp16_chunked_gradients_after_unscaling_equal_the_unchunked_step():
    """Issue 11, acceptance 2: under fp16 autocast with a fixed loss scale S, the cached step's gradients
    divided by S equal those of the plain fp16 step (loss * S, backward, / S) to 1e-3 relative. Applying S
    twice (the old bug) makes them S times too large."""
    if not hasattr(torch, "autocast"):
        pytest.skip("no torch.autocast")
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.rand(16, 3, 16, 16, generator=g), torch.rand(16, 3, 16, 16, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    a = _model().float()
    b = copy.deepcopy(a)
    scale = 1024.0
    amp = torch.autocast("cpu", dtype=torch.float16)
    with amp:
        out = a(x1, x2, y)
    (out["loss"] * scale).backward()
    cached_backward(b, x1, x2, y, 4, autocast=amp, scale=lambda t: t * scale)
    pairs = [(pa.grad / scale, pb.grad / scale) for pa, pb in zip(a.parameters(), b.parameters()) if pa.grad is not None]
    assert len(pairs) > 20 and all(torch.isfinite(gb).all() for _, gb in pairs)
    ga, gb = torch.cat([p.flatten() for p, _ in pairs]), torch.cat([q.flatten() for _, q in pairs])
    # All gradients as one vector: single small tensors (a BN weight) differ by fp16 rounding alone, ~1e-3.
    err = ((gb - ga).norm() / ga.norm()).item()
    assert err < 1e-3, f"relative difference {err:.2e}"


def test_a_training_step_makes_one_host_synchronisation(monkeypatch, tmp_path):
    """The masked augmentation (what accelerators run), NT-Xent, the step and LARS read nothing back to the
    host except the one non-finite check: no data-dependent shapes (aten::nonzero), no blocking host->device
    copies (torch.tensor(host data, device=...)), no .tolist()/.item()/.cpu() (issue 11, item 3). On CPU
    nothing waits, so this counts the calls that would wait on a GPU."""
    from torch.overrides import TorchFunctionMode
    from torch.profiler import ProfilerActivity, profile

    import simclr.data.augment as augment_module
    from conftest import tiny_config
    from simclr.train import Trainer
    from simclr.train.pretrain import load_training_data

    monkeypatch.setattr(augment_module, "_indexing_pays", lambda x: False)
    cfg, train, val = load_training_data(tiny_config(tmp_path, data__image_size=24, augment__blur="true"))
    tr = Trainer(cfg, train, val, log=lambda *_: None)
    batches = tr.batches.epoch(0)
    tr.train_step(*next(batches)[:2])  # first step: lazy initialisation is not a per-step cost

    class Reads(TorchFunctionMode):
        seen: list = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name in ("tensor", "as_tensor", "asarray") and kwargs.get("device") is not None \
                    and args and not isinstance(args[0], torch.Tensor):
                self.seen.append(f"torch.{name}(host data, device=...)")
            # (.numpy() is left out: on CPU the crop boxes are drawn with numpy; on a GPU with torch ops)
            elif name in ("tolist", "item", "cpu") and args and isinstance(args[0], torch.Tensor):
                self.seen.append(f"Tensor.{name}")
            return func(*args, **kwargs)

    x, y, _ = next(batches)
    with profile(activities=[ProfilerActivity.CPU]) as prof, Reads():
        tr.train_step(x, y)
    names = [e.name for e in prof.events()]
    assert names.count("aten::nonzero") == 0 and names.count("aten::masked_select") == 0
    assert Reads.seen == []
    assert names.count("aten::_local_scalar_dense") == 1, "only the non-finite check reads a value back"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_compiled_forward_is_one_graph(precision):
    """Issue 11, acceptance 3: what ``train.compile`` compiles (the model's whole forward: encoder, head,
    NT-Xent, online probe) traces as one graph with no break, in both precisions."""
    m = simclr_model(num_classes=5)
    g = torch.Generator().manual_seed(0)
    x1, x2, y = torch.rand(8, 3, 16, 16, generator=g), torch.rand(8, 3, 16, 16, generator=g), torch.randint(0, 5, (8,), generator=g)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with amp:
        ex = torch._dynamo.explain(m)(x1, x2, y)
    assert ex.graph_break_count == 0 and ex.graph_count == 1, [str(r.reason) for r in ex.break_reasons]
