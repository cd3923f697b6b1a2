"""Throughput of the whole SimCLR pretraining step against the encoder alone, in one run.

    python benchmarks/throughput.py [--data synthetic|PATH] [--arch resnet18] [--width 0.25]
        [--batch-size 256] [--steps 10] [--rounds 3] [--device auto] [--json OUT.json]

Both figures are in source images per second (each source image gives two views):

- encoder alone: forward + backward of the encoder on 2B random tensors already on the device,
  in the training layout (channels_last) and precision, no head, no loss, no optimiser;
- whole step: the real training step of ``simclr.train.Trainer``: slicing a uint8 batch from
  the loaded data, moving it to the device, augmenting both views there, encoder + head,
  NT-Xent + online probe, backward and LARS.

The two are measured in alternating rounds (after warm-up) and the median of each is reported,
so machine noise hits both alike. The ratio whole/encoder is what docs/benchmarks.md records.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from simclr.config import Config, apply_overrides
from simclr.runtime import autocast_for
from simclr.train import Trainer
from simclr.train.pretrain import load_training_data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def encoder_rate(trainer: Trainer, batch: int, steps: int) -> float:
    enc, dev = trainer.model.encoder, trainer.device
    size = trainer.cfg.data.image_size
    x = torch.rand(2 * batch, 3, size, size, device=dev)
    if trainer.cfg.train.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx, _ = autocast_for(dev, trainer.cfg.train.precision)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        with ctx:
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", default="0.25")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10, help="steps per measurement round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args(argv)

    cfg = apply_overrides(Config(), [
        ("data.path", args.data), ("model.arch", args.arch), ("model.width", args.width),
        ("train.batch_size", str(args.batch_size)), ("train.device", args.device), ("train.precision", args.precision),
        ("train.compile", str(args.compile)), ("train.epochs", "1000"), ("train.progress", "false"),
    ])
    cfg, data, _ = load_training_data(cfg)
    trainer = Trainer(cfg, data, None, log=lambda *_: None)
    b = args.batch_size
    it = _batches_forever(trainer)
    # Warm-up: allocator, kernels, compilation.
    step_rate(trainer, b, 2, it)
    encoder_rate(trainer, b, 2)
    enc, whole = [], []
    for _ in range(args.rounds):
        enc.append(encoder_rate(trainer, b, args.steps))
        whole.append(step_rate(trainer, b, args.steps, it))
    dev = trainer.device
    res = {
        "encoder_images_per_sec": statistics.median(enc),
        "step_images_per_sec": statistics.median(whole),
        "ratio": statistics.median(whole) / statistics.median(enc),
        "encoder_rounds": enc,
        "step_rounds": whole,
        "arch": args.arch,
        "width": float(args.width),
        "batch_size": b,
        "image_size": cfg.data.image_size,
        "data": args.data,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "precision": trainer.precision,
        "torch": torch.__version__,
    }
    print(f"encoder alone : {res['encoder_images_per_sec']:8.1f} images/s (fwd+bwd, 2 views each)")
    print(f"whole step    : {res['step_images_per_sec']:8.1f} images/s (load, augment x2, fwd, loss, bwd, LARS)")
    print(f"ratio         : {res['ratio']:.3f}")
    print(json.dumps(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
