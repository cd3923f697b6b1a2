"""Checkpoints: full training state (torch, loaded with weights_only) and encoder weights (safetensors).

Files are written to a temporary file in the same folder, fsynced and renamed, so a crash while
saving leaves the previous file intact. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["CheckpointError", "Pretrained", "atomic_write", "save_checkpoint", "load_checkpoint", "save_encoder", "load_encoder",
           "encoder_metadata",
           "find_checkpoint", "load_run", "nonfinite_tensors"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model, or a file that cannot be written."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type when the message is empty), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then move the result to ``path`` atomically (same filesystem).

    Any failure (a full disk, a read-only folder, an error of ``write``) leaves the previous file
    intact, removes the temporary file and raises CheckpointError naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:200]}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # the permissions of an ordinary new file, not mkstemp's 0600
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # OSError, and torch's RuntimeError when its writer hits a full disk
        free = _free_bytes(path.parent)
        hint = "; the disk is full" if free is not None and free < (1 << 20) else ""
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise CheckpointError(f"cannot write {path}: {reason}{hint}; the previous file, if any, is kept") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _free_bytes(folder: Path) -> int | None:
    try:
        import shutil

        return shutil.disk_usage(folder).free
    except OSError:
        return None


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Save a training state (tensors, numbers, strings, nested dicts/lists) atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, given the file itself or a run folder holding checkpoint.pt."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a run folder with checkpoint.pt, or a .pt file)")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code (``weights_only=True``)."""
    p = find_checkpoint(path)
    if p.stat().st_size == 0:
        raise CheckpointError(f"cannot load checkpoint {p}: the file is empty (a save that never finished)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated files, forbidden globals
        if "weights only load failed" in str(e).lower():
            why = "it holds Python objects other than tensors, so it is not a simclr checkpoint and was not loaded"
        elif isinstance(e, (OSError, EOFError)) or "zip archive" in str(e).lower() or "central directory" in str(e).lower():
            why = f"it is truncated or not a torch file (an interrupted copy or save; {first_line(e)})"
        else:
            why = first_line(e)
        raise CheckpointError(f"cannot load checkpoint {p}: {why}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot load checkpoint {p}: it holds a {type(state).__name__}, not a training state")
    return state


def nonfinite_tensors(tensors: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors of a (nested) state dict that hold NaN or inf (one host sync)."""
    flat: list[tuple[str, torch.Tensor]] = []

    def walk(obj, name):
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point():
                flat.append((name, obj))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{name}.{k}" if name else str(k))

    walk(tensors, "")
    if not flat:
        return []
    ok = torch.stack([torch.isfinite(t).all() for _, t in flat]).cpu()
    return [prefix + name for (name, _), good in zip(flat, ok.tolist()) if not good]


def save_encoder(encoder: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the encoder's state_dict (torchvision names) as safetensors.

    The metadata goes in as one JSON string under the key ``simclr``: safetensors writes its metadata
    map in no fixed order, and a single key keeps the file byte-for-byte reproducible.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {"simclr": json.dumps(metadata or {}, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def encoder_metadata(encoder: torch.nn.Module, image_size: int, epoch: int, **extra) -> dict[str, str]:
    """What a run's encoder.safetensors says of its network (``ResNet.arch_config``: arch, width, stem, stage-1
    projection, SK ratio, TF padding, none of which the weights alone fully tell), its input size and epoch."""
    meta = {**encoder.arch_config(), "image_size": image_size, "epoch": epoch, **extra}
    return {k: str(v) for k, v in meta.items()}


def load_encoder(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@dataclass
class Pretrained:
    """What a pretraining run holds for later use (see ``load_run``).

    ``encoder`` and ``head`` are in eval mode with their trained weights; ``image_size`` is the
    training resolution; ``meta`` has arch, width, cifar_stem, image_size and epoch; ``config`` is
    the saved (resolved) config as a nested dict.
    """

    encoder: torch.nn.Module
    head: torch.nn.Module
    image_size: int
    meta: dict[str, Any]
    config: dict[str, Any]
    path: Path


def load_run(run: str | Path) -> Pretrained:
    """Read a pretraining run (its folder or checkpoint.pt) once: encoder, projection head, metadata."""
    from simclr.model.head import ProjectionHead
    from simclr.model.resnet import ARCHITECTURES, build_encoder

    path = find_checkpoint(run)
    state = load_checkpoint(path)
    try:
        cfg = state["config"]
        m, h = cfg["model"], cfg["head"]
        # keys absent from older runs had these values then
        arch = {"stage1_projection": False, "sk_ratio": 0.0, "tf_padding": False, **m}
        meta = {"arch": m["arch"], "width": float(m["width"]), "cifar_stem": bool(m["cifar_stem"]),
                "stage1_projection": bool(arch["stage1_projection"]), "sk_ratio": float(arch["sk_ratio"]),
                "tf_padding": bool(arch["tf_padding"]),
                "image_size": int(cfg["data"]["image_size"]), "epoch": int(state["epoch"])}
        weights = state["model"]
        if meta["arch"] not in ARCHITECTURES:
            raise CheckpointError(f"{run}: unknown architecture {meta['arch']!r}")
        encoder = build_encoder(meta["arch"], **{k: meta[k] for k in ("width", "cifar_stem", "stage1_projection",
                                                                      "sk_ratio", "tf_padding")})
        head = ProjectionHead(encoder.num_features, num_layers=int(h["num_layers"]), hidden_dim=int(h["hidden_dim"] or 0) or None,
                              out_dim=int(h["out_dim"]), bn=bool(h["bn"]))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CheckpointError(f"{run} is not a simclr pretraining checkpoint") from None
    for name, module in (("encoder", encoder), ("head", head)):
        part = {k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(name + ".")}
        try:
            module.load_state_dict(part)
        except RuntimeError as e:
            raise CheckpointError(f"{run}: {name} weights do not fit {meta['arch']}: {str(e).splitlines()[0]}") from None
        bad = nonfinite_tensors(part)
        if bad:
            raise CheckpointError(f"{run}: the {name} holds non-finite weights ({bad[0]}); the run diverged")
    return Pretrained(encoder.eval(), head.eval(), meta["image_size"], meta, cfg, path)
