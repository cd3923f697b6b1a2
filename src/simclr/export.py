"""Using the encoder outside training: embeddings of a dataset, and export to other formats.

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

from simclr.augment import center_resize

__all__ = ["EXPORT_FORMATS", "embed_dataset", "write_embeddings", "export_encoder"]

EXPORT_FORMATS = ("safetensors", "torchvision", "onnx")


@torch.no_grad()
def embed_dataset(encoder: nn.Module, ds, image_size: int, device: torch.device, head: nn.Module | None = None,
                  batch_size: int = 512, progress: bool = True) -> np.ndarray:
    """h (or z = head(h) when ``head`` is given) of every image, in order: float32 (N, D)."""
    encoder = encoder.to(device).eval()
    if head is not None:
        head = head.to(device).eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ds), desc="embedding", unit="img", dynamic_ncols=True)
    rows = []
    for start in range(0, len(ds), batch_size):
        idx = torch.arange(start, min(len(ds), start + batch_size))
        x = center_resize(ds.get(idx).to(device), image_size).contiguous(memory_format=torch.channels_last)
        h = encoder(x)
        rows.append((head(h) if head is not None else h).float().cpu())
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return torch.cat(rows).numpy().astype(np.float32)


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
    from simclr.checkpoint import atomic_write, save_encoder

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
