"""Where and how tensors are computed: the device, mixed precision and seeding.

Small and dependency-free on purpose: training, evaluation and the tools all use it.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from simclr.config import ConfigError

__all__ = ["pick_device", "autocast_for", "step_generator", "seeded", "cpu_model"]


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; an unavailable device is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("the device is cuda but no CUDA GPU is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("the device is mps but MPS is not available; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device '{name}' cannot train or evaluate; use auto, cpu, cuda, cuda:N or mps")
    return dev


def autocast_for(device: torch.device, precision: str):
    """(autocast context, resolved precision): bf16 on CUDA by default, fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one training step's augmentations: a pure function of (seed, step, rank),
    so a resumed run draws exactly what the uninterrupted one drew."""
    g = torch.Generator(device=device)
    g.manual_seed(((seed * 1_000_003 + step + 7) * 131 + rank) % (2**63))
    return g


@contextlib.contextmanager
def seeded(seed: int):
    """Run a block (e.g. a random initialisation) under ``torch.manual_seed(seed)`` without touching
    the caller's CPU random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one), for benchmark records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
