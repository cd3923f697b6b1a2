"""Using the encoder outside training: embeddings of a dataset (``embed``), and export to other formats (``export``).

Formats: ``safetensors`` (torchvision parameter names, no code), ``torchvision`` (a ``torch.save``
state_dict that torchvision's resnet of the same depth loads once its ``fc`` is replaced by
``nn.Identity()``, and, for CIFAR-stem encoders, its ``conv1``/``maxpool`` by the CIFAR stem; see
``docs/export.md``), ``onnx`` (input ``images`` (B, 3, S, S) in [0, 1] with a dynamic batch axis,
output ``h``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch import nn

from simclr.checkpoint import atomic_write, save_encoder
from simclr.evaluate.features import extract_features
from simclr.evaluate.inputs import prepare

__all__ = ["EXPORT_FORMATS", "write_embeddings", "export_encoder", "embed", "export"]

EXPORT_FORMATS = ("safetensors", "torchvision", "onnx")


def write_embeddings(out: str | Path, emb: np.ndarray, names: list[str], labels: torch.Tensor, classes: list[str]) -> None:
    """DIR/embeddings.npy (row i = image i) and DIR/index.csv (row, path, label, class)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "embeddings.npy", emb)
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "path", "label", "class"])
        for i, (name, lab) in enumerate(zip(names, labels.tolist())):
            w.writerow([i, name, lab if lab >= 0 else "", classes[lab] if lab >= 0 else ""])


def export_encoder(encoder: nn.Module, fmt: str, out: str | Path, image_size: int, metadata: dict | None = None) -> Path:
    """Write the encoder alone in ``fmt`` (one of EXPORT_FORMATS) to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.cpu().eval()
    if fmt == "safetensors":
        save_encoder(encoder, out, {k: str(v) for k, v in (metadata or {}).items()})
    elif fmt == "torchvision":
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
    data.path into eval.out. Returns the shape written."""
    inp = prepare(cfg)
    head = inp.run.head.to(inp.device) if cfg.embed.projection else None
    feats = extract_features(inp.encoder, inp.data, inp.image_size, inp.device, cfg.eval.batch_size, head=head, progress=True)
    emb = (feats[1] if head is not None else feats).numpy().astype(np.float32)
    write_embeddings(cfg.eval.out, emb, inp.data.names(cfg.data.path), inp.data.labels, inp.data.classes)
    log(f"wrote {emb.shape[0]} x {emb.shape[1]} {'projections z' if head is not None else 'representations h'} to {cfg.eval.out}")
    return emb.shape


def export(cfg, log=print) -> Path:
    """``simclr export`` from a ``simclr.config.ExportConfig``: the encoder alone, as export.format, to eval.out."""
    inp = prepare(cfg, load_data=False)
    m = inp.meta
    path = export_encoder(inp.encoder, cfg.export.format, cfg.eval.out, inp.image_size, m)
    log(f"wrote {cfg.export.format} encoder ({m['arch']}, width {m['width']}, input {inp.image_size}px in [0, 1]) to {path}")
    return path
