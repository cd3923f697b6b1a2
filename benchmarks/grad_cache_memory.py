"""Peak memory of one SimCLR step, plain or gradient-cached, measured in a fresh process (CPU).

    python benchmarks/grad_cache_memory.py --mode plain|chunked [--batch 1024] [--chunk 128]
        [--arch resnet18] [--width 0.125] [--size 32]

Prints JSON with the peak resident memory of the process (ru_maxrss) before and after the step and
their difference, the memory the step itself added. Run each mode in its own process.
"""

from __future__ import annotations

import argparse
import json
import resource

import torch

from simclr.config import Config, config_from_flat, resolve
from simclr.model import SimCLR
from simclr.train.step import cached_backward


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("plain", "chunked"), required=True)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--size", type=int, default=32)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = config_from_flat({"model.arch": a.arch, "model.width": a.width}, Config())
    model = SimCLR.from_config(resolve(cfg, a.size))
    x1 = torch.rand(a.batch, 3, a.size, a.size)
    x2 = torch.rand(a.batch, 3, a.size, a.size)
    before = _peak_mib()
    if a.mode == "plain":
        model(x1, x2)["loss"].backward()
    else:
        cached_backward(model, x1, x2, None, a.chunk)
    after = _peak_mib()
    res = {"mode": a.mode, "batch": a.batch, "chunk": a.chunk if a.mode == "chunked" else None, "peak_before_mib": before,
           "peak_after_mib": after, "step_mib": after - before}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
