"""Where and how tensors are computed: the device, mixed precision and seeding.

Small and dependency-free on purpose: training, evaluation and the tools all use it.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from simclr.config import ConfigError

__all__ = ["pick_device", "native_bf16_cpu", "resolve_precision", "autocast_for", "step_generator", "seeded", "cpu_model"]


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


def native_bf16_cpu() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (x86 AVX512-BF16 or AMX), where bf16 autocast
    runs a training step about twice as fast as fp32 (docs/benchmarks.md, "Step cost"). Elsewhere bf16
    is emulated and slower. ``SIMCLR_CPU_BF16=0`` in the environment answers False everywhere: the test
    suite sets it, so that its numbers do not depend on the machine's processor."""
    if os.environ.get("SIMCLR_CPU_BF16", "").strip() == "0":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except Exception:  # private helpers: a PyTorch without them, or one that raises, means no
        return False


def resolve_precision(device: torch.device, precision: str) -> tuple[str, str]:
    """(precision, why): ``auto`` is bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere (MPS, other
    CPUs); an explicit choice is kept. ``why`` says in a few words what decided it, for the log."""
    if precision != "auto":
        return precision, "as set"
    if device.type == "cuda":
        return "bf16", "auto: CUDA"
    if device.type == "cpu" and native_bf16_cpu():
        return "bf16", "auto: this CPU computes bf16 natively (AVX512-BF16/AMX); --train.precision fp32 to change"
    if device.type == "cpu" and os.environ.get("SIMCLR_CPU_BF16", "").strip() == "0":
        return "fp32", "auto: SIMCLR_CPU_BF16=0"
    return "fp32", f"auto: no native bf16 on this {device.type.upper() if device.type != 'cpu' else 'CPU'}"


def autocast_for(device: torch.device, precision: str):
    """(autocast context, resolved precision) for ``precision`` (see ``resolve_precision`` for auto)."""
    precision, _ = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator of one training step's augmentations: a pure function of (seed, step, rank),
    so a resumed run draws exactly what the uninterrupted one drew."""
    base = seed * 1_000_003 + step + 7
    if rank < 131:  # the first releases' seeds, in [0, 2**63): their runs resume with the same draws
        s = (base * 131 + rank) % 2**63
    else:  # base * 131 + rank would be the seed of rank - 131 at the next step: hash into [2**63, 2**64)
        s = _splitmix64((base << 32) + rank) | 1 << 63
    g = torch.Generator(device=device)
    g.manual_seed(s)
    return g


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that scatters nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


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
