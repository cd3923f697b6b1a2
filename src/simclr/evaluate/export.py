"""Using the encoder outside training: embeddings of a dataset (``embed``), and export to other formats (``export``).

Formats: ``safetensors`` (torchvision parameter names, no code), ``torchvision`` (a ``torch.save``
state_dict that torchvision's resnet of the same depth loads once its ``fc`` is replaced by
``nn.Identity()``, and, for CIFAR-stem encoders, its ``conv1``/``maxpool`` by the CIFAR stem; see
``docs/export.md``), ``onnx`` (input ``images`` (B, 3, S, S) in [0, 1] with a dynamic batch axis,
output ``h``).
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simclr.checkpoint import atomic_write, find_checkpoint, save_encoder
from simclr.config import ConfigError, validate
from simclr.data.errors import printable
from simclr.evaluate.features import extract_features
from simclr.evaluate.inputs import prepare

__all__ = ["EXPORT_FORMATS", "write_embeddings", "export_encoder", "embed", "export", "protected_reason", "require_onnx"]

EXPORT_FORMATS = ("safetensors", "torchvision", "onnx")


def write_embeddings(out: str | Path, emb: np.ndarray, names: list[str], labels: torch.Tensor, classes: list[str]) -> None:
    """DIR/embeddings.npy (row i = image i) and DIR/index.csv (row, path, label, class), written together.

    Both go to temporary files first and are renamed into place only once both are complete, so a
    failure (a full disk, a name that cannot be written) leaves the previous pair, if any, untouched
    and never an index that does not match the embeddings. index.csv is UTF-8; file and class names
    that are not valid UTF-8 (Linux names are bytes) are written as their original bytes
    (``surrogateescape``): read it back with ``open(..., encoding="utf-8", errors="surrogateescape")``
    and ``os.fsencode`` gives the exact file name.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = labels.tolist()
    if len(names) != len(emb) or len(labels) != len(emb):
        raise ValueError(f"{len(emb)} embeddings for {len(names)} names and {len(labels)} labels")

    def write_index(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["row", "path", "label", "class"])
            for i, (name, lab) in enumerate(zip(names, labels)):
                w.writerow([i, name, lab if lab >= 0 else "", classes[lab] if lab >= 0 else ""])

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, emb)
        atomic_write(out / "index.csv", write_index)  # renamed just before embeddings.npy is

    atomic_write(out / "embeddings.npy", write_npy)


def export_encoder(encoder: nn.Module, fmt: str, out: str | Path, image_size: int, metadata: dict | None = None) -> Path:
    """Write the encoder alone in ``fmt`` (one of EXPORT_FORMATS) to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.cpu().eval()
    if fmt == "safetensors":
        save_encoder(encoder, out, {k: str(v) for k, v in (metadata or {}).items()})
    elif fmt == "torchvision":
        if getattr(encoder, "sk_ratio", 0) > 0:
            raise ConfigError("this is a selective-kernel ResNet (model.sk_ratio), which torchvision does not have; "
                              "export --format safetensors or onnx instead")
        if getattr(encoder, "stage1_projection", False) and "layer1.0.conv3.weight" not in encoder.state_dict():
            raise ConfigError("this encoder has the official stage-1 projection shortcut (model.stage1_projection), which "
                             "torchvision's resnet18/34 lack; export --format safetensors or onnx instead")
        if getattr(encoder, "tf_padding", False):
            print("notice: this encoder places its stem max-pool windows as TensorFlow does (model.tf_padding, the official "
                  "checkpoints); torchvision's resnet pads symmetrically, so its h will differ slightly from this run's on "
                  "even input sizes", file=sys.stderr)
        sd = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        atomic_write(out, lambda tmp: torch.save(sd, tmp))
    elif fmt == "onnx":
        x = torch.rand(2, 3, image_size, image_size)

        def write(tmp: str) -> None:
            torch.onnx.export(encoder, (x,), tmp, input_names=["images"], output_names=["h"],
                              dynamic_axes={"images": {0: "batch"}, "h": {0: "batch"}}, dynamo=False,
                              opset_version=17)

        atomic_write(out, write)
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    return out


def embed(cfg, log=print) -> tuple[int, int]:
    """``simclr embed`` from a ``simclr.config.EmbedConfig``: h (or z with embed.projection) of every image of
    data.path into eval.out (a folder, checked before any work). Returns the shape written."""
    inp = prepare(cfg, out=lambda run: cfg.eval.out, out_kind="dir", log=log)
    head = inp.run.head.to(inp.device) if cfg.embed.projection else None
    feats = extract_features(inp.encoder, inp.data, inp.image_size, inp.device, cfg.eval.batch_size, head=head, progress=True,
                             crop_fraction=inp.crop_fraction)
    emb = (feats[1] if head is not None else feats).numpy().astype(np.float32)
    write_embeddings(inp.out, emb, inp.data.names(cfg.data.path), inp.data.labels, inp.data.classes)
    what = "projections z" if head is not None else "representations h"
    log(f"wrote {emb.shape[0]} x {emb.shape[1]} {what} to {printable(inp.out)}")
    return emb.shape


def export(cfg, log=print) -> Path:
    """``simclr export`` from a ``simclr.config.ExportConfig``: the encoder alone, as export.format, to eval.out.

    Before any work: the onnx format needs the ``onnx`` package, and eval.out must be writable and must
    not be a training file (see ``protected_reason``)."""
    validate(cfg)
    if cfg.export.format == "onnx":
        require_onnx()
    ckpt = find_checkpoint(cfg.encoder.checkpoint)
    why = protected_reason(cfg.eval.out, ckpt, cfg.export.format)
    if why:
        raise ConfigError(f"refusing to write the export over {printable(cfg.eval.out)}: {why}; choose another --out")
    inp = prepare(cfg, load_data=False, out=lambda run: cfg.eval.out, out_kind="file")
    m = inp.meta
    path = export_encoder(inp.encoder, cfg.export.format, inp.out, inp.image_size, m)
    log(f"wrote {cfg.export.format} encoder ({m['arch']}, width {m['width']}, input {inp.image_size}px in [0, 1]) to {printable(path)}")
    return path


def require_onnx() -> None:
    """ConfigError (one line) unless the ``onnx`` package, which torch's ONNX exporter needs, imports."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("--format onnx needs the onnx package: pip install 'simclr[export]'") from None


RUN_RECORDS = ("checkpoint.pt", "encoder.safetensors", "config.yaml", "metrics.jsonl")


# An existing file is replaced only when its name says it is an export of that format (an earlier export).
EXPORT_SUFFIXES = {"safetensors": (".safetensors",), "torchvision": (".pth", ".pt"), "onnx": (".onnx",)}


def protected_reason(out: str | Path, checkpoint: str | Path, fmt: str | None = None) -> str | None:
    """Why ``out`` must not receive an export (None when it may). The rule, checked on the path as given
    and on what it links to:

    - it is the checkpoint being exported, or one of that run's own records (checkpoint.pt,
      encoder.safetensors, config.yaml, metrics.jsonl next to it);
    - it is named like a training checkpoint, existing or not: ``checkpoint.pt``, or a ``.pt`` file in a
      folder named ``checkpoints`` (where runs keep their epoch checkpoints);
    - it is an existing file that holds a training state: torch loads it (``weights_only``, memory-mapped,
      no tensor data read) as a dict with ``model`` and ``config`` entries, as every simclr checkpoint;
    - with ``fmt``: it is an existing file whose suffix is not one of that format's (``EXPORT_SUFFIXES``),
      so a user's image, text or other file is never replaced by an export.
    """
    p = Path(out)
    ckpt = Path(checkpoint)
    candidates = [p]
    try:
        candidates.append(Path(os.path.realpath(p)))
    except (OSError, ValueError):
        pass
    for c in candidates:
        if c.name == "checkpoint.pt":
            return "a file named checkpoint.pt is a run's training state"
        if c.suffix == ".pt" and c.parent.name == "checkpoints":
            return "a .pt file in a checkpoints/ folder is a kept training checkpoint"
    try:
        if not p.exists():
            return None
    except OSError:  # a name the file system refuses: check_output reports it
        return None
    for name in RUN_RECORDS:
        own = ckpt if name == "checkpoint.pt" else ckpt.parent / name
        try:
            if own.exists() and os.path.samefile(p, own):
                return "it is the checkpoint being exported" if own == ckpt else f"it is the run's {name}"
        except OSError:
            continue
    if _is_training_state(p):
        return "it holds a training checkpoint"
    if fmt is not None and p.is_file() and p.suffix.lower() not in EXPORT_SUFFIXES[fmt]:
        return (f"it is an existing file that is not a {fmt} export (only a file ending in "
                f"{' or '.join(EXPORT_SUFFIXES[fmt])} is replaced)")
    return None


def _is_training_state(path: Path) -> bool:
    try:
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable, not a torch file, or not one weights_only reads: not a simclr checkpoint either
        return False
    return isinstance(state, dict) and "model" in state and "config" in state
