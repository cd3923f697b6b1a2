"""Throughput of the whole SimCLR pretraining step against the encoder alone, in one run, with the
operator calls and host synchronisations of one step.

    python benchmarks/throughput.py [--data synthetic|PATH] [--arch resnet18] [--width 0.25]
        [--batch-size 256] [--image-size auto] [--steps 10] [--rounds 3] [--warmup 2] [--count-steps 2]
        [--device auto] [--precision auto] [--compile] [--matrix [--no-compile]] [--sync-sites]
        [--json OUT.json]

Both rates are in source images per second (each source image gives two views):

- encoder alone: forward + backward of the encoder on 2B random tensors already on the device,
  in the training layout (channels_last) and precision, no head, no loss, no optimiser; with
  ``--compile`` the encoder is ``torch.compile``-d too (as the whole model is in the step);
- whole step: the real training step of ``simclr.train.Trainer``: slicing a uint8 batch from
  the loaded data, moving it to the device, augmenting both views there, encoder + head,
  NT-Xent + online probe, backward, the non-finite check and LARS.

The two are measured in alternating rounds (after warm-up) and the median of each is reported,
so machine noise hits both alike. The ratio whole/encoder is what docs/benchmarks.md records.

Step cost (``ops_per_step``, ``syncs_per_step``): after the timed rounds, ``--count-steps`` more
whole steps run under instrumentation (not timed) and the per-step mean is reported:

- ``ops_per_step``: the ``aten::*`` events ``torch.profiler`` records in one ``Trainer.train_step``
  (CPU activity), nested calls included (``aten::to`` -> ``aten::_to_copy`` -> ``aten::copy_`` is 3);
  ``optimizer_ops_per_step`` is the part inside ``optimizer.step()`` (LARS).
  Each is one call through the PyTorch dispatcher: host time per call on any device, and on a GPU
  roughly one kernel launch per leaf call. ``top_level_ops_per_step`` counts only those without an
  ``aten::`` parent (the calls the Python code and autograd make). Under ``torch.compile`` the fused
  kernels Inductor generates are not dispatcher calls and are not counted; the extern kernels it
  calls (convolutions, matmuls) and everything outside the compiled graph (augmentation, LARS) are.
  On CUDA ``gpu_kernels_per_step`` also counts the device activities (kernels, copies, memsets).
- ``syncs_per_step``, on CUDA: the warnings ``torch.cuda.set_sync_debug_mode("warn")`` raises in one
  step, i.e. every call that blocks the host until the GPU catches up (``cudaStreamSynchronize``,
  device->host reads, blocking copies). This is the real figure.
- ``syncs_per_step``, on CPU, where nothing ever waits for a device: a count of the calls that
  *would* block the host on a GPU, in two parts (``sync_breakdown`` gives each name):

  1. profiler events, each counted only when no ancestor is counted too:
     ``aten::_local_scalar_dense`` (a tensor's value read on the host: ``.item()``, ``bool(t)``,
     ``int(t)``, ``float(t)``, ``if t:``; on CUDA a device->host copy), ``aten::nonzero`` (output size
     depends on the data: ``torch.nonzero``, boolean-mask indexing ``x[mask]`` and ``index_put_`` with a
     mask, which call it), ``aten::masked_select``, ``aten::equal`` (returns a Python bool),
     ``aten::_unique``, ``aten::_unique2``, ``aten::unique_dim``, ``aten::unique_consecutive``,
     ``aten::bincount`` (sizes from the data). On CUDA each of these waits for the GPU; on CPU they
     are ordinary calls, hence the proxy.
  2. Python-level calls seen by a ``TorchFunctionMode``: ``torch.tensor`` / ``torch.as_tensor`` /
     ``torch.asarray`` of host data with an explicit ``device=`` (on CUDA a copy from pageable memory
     that blocks, e.g. ``torch.tensor(table, device=x.device)``), ``Tensor.tolist()`` and
     ``Tensor.cpu()`` (device->host copies). On CPU these make no ``aten`` call that shows them.
     With ``--compile`` the mode is left out of the compiled call (a mode there would make Dynamo
     recompile): Python code inside the graph runs once at trace time, not per step.

  Not seen on CPU: blocking ``.to(device)`` of CPU tensors (on CPU every ``.to(device)`` is a no-op),
  allocator synchronisations, and NCCL. The CPU count therefore bounds the GPU one from below for
  the same code, up to ``aten::nonzero`` calls whose CUDA kernels skip the sync (none in this code).

``--matrix`` runs eager and compiled, fp32 and bf16 (four fresh trainers, one process) and prints
a table and, as the last line, ``{"matrix": [row, ...], ...}``, each row with the keys of a single
run; ``--no-compile`` leaves the two compiled rows out (on CPU compiling takes 20-120 s a row). On
CUDA each run also records ``peak_memory_bytes`` / ``peak_memory_gib`` (``torch.cuda.max_memory_allocated``
over the run). ``--sync-sites`` adds ``sync_sites``: where in the code each counted sync was made.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from simclr.runtime import cpu_model
from simclr.config import Config, apply_overrides
from simclr.train import Trainer
from simclr.train.pretrain import load_training_data

# Dispatcher ops that block the host on CUDA (see the module docstring).
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::equal", "aten::_unique",
    "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::bincount",
})
_FACTORIES = frozenset({"tensor", "as_tensor", "asarray"})
_READS = frozenset({"tolist", "cpu"})
_HERE = str(Path(__file__).resolve())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _site() -> str:
    """The innermost calling frame in this project's package (not torch, not this script): 'simclr/...:line'."""
    for f in reversed(traceback.extract_stack()[:-2]):
        if "simclr/" in f.filename and "/torch/" not in f.filename and f.filename != _HERE:
            return f"{f.filename[f.filename.find('simclr/'):]}:{f.lineno}"
    return "?"


class HostReads(TorchFunctionMode):
    """Counts the Python-level calls that block the host on CUDA but make no telling aten call on CPU."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.sites: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        hit = None
        if name in _FACTORIES and kwargs.get("device") is not None and args and not isinstance(args[0], torch.Tensor):
            hit = f"torch.{name}(host data, device=...)"
        elif name in _READS and args and isinstance(args[0], torch.Tensor):
            hit = f"Tensor.{name}()"
        if hit:
            self.counts[hit] += 1
            self.sites[f"{hit} at {_site()}"] += 1
        return func(*args, **kwargs)


def _outside_mode(fn):
    """``fn`` called with the innermost torch-function mode (ours) popped: for compiled callables."""
    def call(*a, **k):
        with torch.overrides._pop_mode_temporarily():
            return fn(*a, **k)
    return call


def encoder_rate(trainer: Trainer, enc, batch: int, steps: int) -> float:
    dev = trainer.device
    size = trainer.cfg.data.image_size
    x = torch.rand(2 * batch, 3, size, size, device=dev)
    if trainer.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        with trainer.autocast:
            h = enc(x)
        h.float().sum().backward()
        enc.zero_grad(set_to_none=True)
    _sync(dev)
    return steps * batch / (time.perf_counter() - t0)


def step_rate(trainer: Trainer, batch: int, steps: int, it) -> float:
    _sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, _ = next(it)
        trainer.train_step(x, y)
    _sync(trainer.device)
    return steps * batch / (time.perf_counter() - t0)


def _batches_forever(trainer: Trainer):
    epoch = 0
    while True:
        yield from trainer.batches.epoch(epoch)
        epoch += 1


def count_ops(trainer: Trainer, it, steps: int, sites: bool = False) -> dict:
    """Profile ``steps`` whole steps: dispatcher calls (and, on CPU, the sync proxy) per step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = trainer.device.type == "cuda"
    batches = [next(it) for _ in range(steps)]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    mode = None if cuda else HostReads()
    saved = trainer.forward_backward
    if mode is not None and trainer.cfg.train.compile:
        trainer.forward_backward = _outside_mode(saved)
    _sync(trainer.device)
    try:
        with profile(activities=acts, with_stack=sites) as prof:
            for x, y, _ in batches:
                if mode is not None:
                    with mode:
                        trainer.train_step(x, y)
                else:
                    trainer.train_step(x, y)
            _sync(trainer.device)
    finally:
        trainer.forward_backward = saved
    ops = top = opt = kernels = 0
    syncs: collections.Counter = collections.Counter()
    where: collections.Counter = collections.Counter()
    for e in prof.events():
        if getattr(e, "device_type", None) is not None and e.device_type.name == "CUDA":
            kernels += 1
            continue
        if not e.name.startswith("aten::"):
            continue
        ops += 1
        parents, p = [], e.cpu_parent
        while p is not None:
            parents.append(p.name)
            p = p.cpu_parent
        top += not any(n.startswith("aten::") for n in parents)
        opt += any(n.startswith("Optimizer.step") for n in parents)
        if not cuda and e.name in SYNC_OPS and not any(n in SYNC_OPS for n in parents):
            syncs[e.name] += 1
            if sites:  # with_stack: the Python frames are the event's profiler ancestors, innermost first
                frames = [n for n in parents if "simclr/" in n and "/torch/" not in n]
                where[f"{e.name} at {frames[0][frames[0].find('simclr/'):] if frames else '?'}"] += 1
    res = {"ops_per_step": ops / steps, "top_level_ops_per_step": top / steps, "optimizer_ops_per_step": opt / steps,
           "count_steps": steps}
    if cuda:
        res["gpu_kernels_per_step"] = kernels / steps
    else:
        syncs.update(mode.counts)
        where.update(mode.sites)
        res["syncs_per_step"] = sum(syncs.values()) / steps
        res["sync_breakdown"] = {k: v / steps for k, v in syncs.most_common()}
        res["syncs_counted_by"] = "cpu proxy: profiler sync ops + host-data factories with device= + tolist/cpu"
        if sites:
            res["sync_sites"] = {k: v / steps for k, v in where.most_common()}
    return res


def count_cuda_syncs(trainer: Trainer, it, steps: int, sites: bool = False) -> dict:
    """``torch.cuda.set_sync_debug_mode("warn")`` over ``steps`` whole steps: the warnings per step."""
    batches = [next(it) for _ in range(steps)]
    _sync(trainer.device)
    prev = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for x, y, _ in batches:
                trainer.train_step(x, y)
        finally:
            torch.cuda.set_sync_debug_mode(prev)
    hits = [w for w in caught if "synchroniz" in str(w.message)]
    # The warning points at the Python line that made the synchronising call.
    where = collections.Counter(f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}" for w in hits)
    res = {"syncs_per_step": len(hits) / steps, "syncs_counted_by": "torch.cuda.set_sync_debug_mode('warn')",
           "sync_breakdown": {k: v / steps for k, v in where.most_common()}}
    if sites:
        res["sync_sites"] = res["sync_breakdown"]
    return res


def measure(args, precision: str, compile_: bool) -> dict:
    """One configuration: a fresh Trainer, warm-up, alternating timed rounds, then the counted steps."""
    pairs = [("data.path", args.data), ("model.arch", args.arch), ("model.width", args.width),
             ("train.batch_size", str(args.batch_size)), ("train.device", args.device), ("train.precision", precision),
             ("train.compile", str(compile_)), ("train.epochs", "1000"), ("train.progress", "false")]
    if args.image_size:
        pairs.append(("data.image_size", str(args.image_size)))
    if args.synthetic_images:
        pairs.append(("data.synthetic_train", str(args.synthetic_images)))
    cfg = apply_overrides(Config(), pairs)
    cfg, data, _ = load_training_data(cfg)
    trainer = Trainer(cfg, data, None, log=lambda *_: None)
    dev = trainer.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    enc = torch.compile(trainer.model.encoder) if compile_ else trainer.model.encoder
    b = args.batch_size
    it = _batches_forever(trainer)
    t0 = time.perf_counter()
    # Warm-up: allocator, kernels, compilation.
    step_rate(trainer, b, args.warmup, it)
    encoder_rate(trainer, enc, b, args.warmup)
    warmup_s = time.perf_counter() - t0
    enc_r, whole = [], []
    for _ in range(args.rounds):
        enc_r.append(encoder_rate(trainer, enc, b, args.steps))
        whole.append(step_rate(trainer, b, args.steps, it))
    res = {
        "encoder_images_per_sec": statistics.median(enc_r),
        "step_images_per_sec": statistics.median(whole),
        "ratio": statistics.median(whole) / statistics.median(enc_r),
        "encoder_rounds": enc_r,
        "step_rounds": whole,
        "arch": args.arch,
        "width": float(args.width),
        "batch_size": b,
        "image_size": cfg.data.image_size,
        "data": args.data,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "precision": trainer.precision,
        "torch": torch.__version__,
        "compile": bool(compile_),
        "channels_last": bool(cfg.train.channels_last),
        "warmup_s": warmup_s,
    }
    if args.count_steps:
        res.update(count_ops(trainer, it, args.count_steps, args.sync_sites))
        if dev.type == "cuda":
            res.update(count_cuda_syncs(trainer, it, args.count_steps, args.sync_sites))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev)
        res["peak_memory_bytes"] = int(peak)
        res["peak_memory_gib"] = peak / 2**30
    else:
        res["cpu_model"] = cpu_model()
    del trainer, enc, it
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_single(res: dict) -> None:
    print(f"encoder alone : {res['encoder_images_per_sec']:8.1f} images/s (fwd+bwd, 2 views each)")
    print(f"whole step    : {res['step_images_per_sec']:8.1f} images/s (load, augment x2, fwd, loss, bwd, LARS)")
    print(f"ratio         : {res['ratio']:.3f}")
    if "ops_per_step" in res:
        print(f"ops/step      : {res['ops_per_step']:8.1f} aten calls ({res['top_level_ops_per_step']:.1f} top-level, "
              f"{res['optimizer_ops_per_step']:.1f} in optimizer.step)")
        print(f"syncs/step    : {res['syncs_per_step']:8.1f} host synchronisations ({res['syncs_counted_by']})")


def print_table(rows: list[dict]) -> None:
    head = (f"{'mode':8} {'precision':9} {'encoder img/s':>13} {'step img/s':>10} {'ratio':>6} {'ops/step':>9} "
            f"{'optim ops':>9} {'syncs/step':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{'compile' if r['compile'] else 'eager':8} {r['precision']:9} {r['encoder_images_per_sec']:13.1f} "
              f"{r['step_images_per_sec']:10.1f} {r['ratio']:6.3f} {_fmt(r.get('ops_per_step'), '9.1f')} "
              f"{_fmt(r.get('optimizer_ops_per_step'), '9.1f')} "
              f"{_fmt(r.get('syncs_per_step'), '10.1f')}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", default="0.25")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=0, help="training side in pixels (default: the data's auto size)")
    ap.add_argument("--synthetic-images", type=int, default=0, help="data.synthetic_train (default: the config's)")
    ap.add_argument("--steps", type=int, default=10, help="steps per measurement round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first (compilation happens here)")
    ap.add_argument("--count-steps", type=int, default=2, help="instrumented steps for ops/syncs per step (0: skip)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="with --matrix: leave the compiled rows out")
    ap.add_argument("--matrix", action="store_true", help="eager/compiled x fp32/bf16 in one run: a table and JSON")
    ap.add_argument("--sync-sites", action="store_true", help="record where each counted sync is made (slower count)")
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args(argv)
    if args.compile and args.no_compile:
        ap.error("--compile and --no-compile contradict each other")

    if not args.matrix:
        res = measure(args, args.precision, args.compile)
        print_single(res)
    else:
        combos = [(False, "fp32"), (False, "bf16")] + ([] if args.no_compile else [(True, "fp32"), (True, "bf16")])
        rows = []
        for compile_, precision in combos:
            torch._dynamo.reset()
            t0 = time.perf_counter()
            row = measure(args, precision, compile_)
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"[{'compile' if compile_ else 'eager'} {row['precision']}: step {row['step_images_per_sec']:.1f} images/s, "
                  f"{row.get('ops_per_step', 0):.0f} ops, {row.get('syncs_per_step', 0):.0f} syncs a step; "
                  f"{row['wall_s']:.0f} s]", file=sys.stderr, flush=True)
        shared = {k: rows[0][k] for k in ("arch", "width", "batch_size", "image_size", "data", "device", "torch")}
        res = {"matrix": rows, **shared}
        if rows[0].get("cpu_model"):
            res["cpu_model"] = rows[0]["cpu_model"]
        if args.no_compile:
            res["note"] = "compiled rows left out (--no-compile)"
        print_table(rows)
        if args.no_compile:
            print("(compiled rows left out: --no-compile)")
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
