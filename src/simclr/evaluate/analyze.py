"""Diagnostics of a representation: is it aligned, uniform, high-rank, or collapsed?

- alignment and uniformity of the L2-normalised projections (Wang & Isola, 2020): alignment is
  E ||z1 - z2||^2 over two augmented views of an image (lower is better), uniformity is
  log E exp(-2 ||zi - zj||^2) over different images (lower is more uniform; -4 is the floor for
  many points on a high-dimensional sphere);
- effective rank (Roy & Vetterli, 2007) of h and z: exp of the entropy of the normalised singular
  values of the centred features; 1 means everything lies on a line;
- per-dimension standard deviation of the L2-normalised h and z, scaled by sqrt(d) so that 1 is what
  directions spread evenly over the sphere give and 0 is complete collapse (Jing et al., 2022).

A representation is flagged as collapsed when the scaled standard deviation of h falls under
``COLLAPSE_STD`` or its effective rank under ``COLLAPSE_RANK``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from simclr.checkpoint import atomic_write
from simclr.config import AugmentConfig, ConfigError, as_saved, config_from_dict, validate
from simclr.data import DataError
from simclr.data.augment import SimCLRAugment
from simclr.data.errors import printable
from simclr.evaluate.features import extract_features
from simclr.evaluate.inputs import prepare

__all__ = ["alignment", "uniformity", "effective_rank", "scaled_std", "analyze", "analyze_run", "COLLAPSE_STD",
           "COLLAPSE_RANK", "MIN_IMAGES"]

# Complete collapse drives the scaled std to ~0 (under 1e-3 for a constant encoder). Post-ReLU pooled h lies
# in a cone, so healthy but young representations are low too: 0.04-0.10 after 3-9 steps of a width-0.125
# ResNet-18 at 16px, with effective rank 14-32 of 64. The threshold sits below that.
COLLAPSE_STD = 0.02
COLLAPSE_RANK = 2.0
MIN_IMAGES = 10  # fewer points say nothing about rank, spread or uniformity (the floor of analyze.max_images)
MAX_LEGEND = 20  # classes named in the map's legend; beyond, points are coloured by class index only


def alignment(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """E ||z1 - z2||^2 of L2-normalised (N, d) pairs."""
    return (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).pow(2).sum(1).mean().item()


def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(-t ||zi - zj||^2) over pairs i < j of L2-normalised (N, d) rows."""
    zn = F.normalize(z.double(), dim=1)
    d2 = torch.pdist(zn).pow(2)
    return torch.logsumexp(-t * d2, 0).item() - math.log(d2.numel())


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred (N, d) features."""
    s = torch.linalg.svdvals((x - x.mean(0)).double())
    if s.sum() <= 1e-12 * max(1.0, x.abs().max().item()):
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


def scaled_std(x: torch.Tensor) -> float:
    """Mean per-dimension std of the L2-normalised (N, d) rows, times sqrt(d)."""
    xn = F.normalize(x.double(), dim=1)
    return (xn.std(0).mean() * math.sqrt(x.shape[1])).item()


def analyze(encoder: nn.Module, head: nn.Module | None, ds, image_size: int, device: torch.device, out: str | Path,
            max_images: int = 2000, seed: int = 0, queries: int = 6, neighbours: int = 7, log=print,
            crop_fraction: float | None = None, augment: AugmentConfig | None = None) -> dict:
    """Compute the diagnostics on up to ``max_images`` images of ``ds`` (all of them when it has fewer)
    and write PNGs + analysis.json. Fewer than ``MIN_IMAGES`` images are refused (DataError): a handful
    of points has no meaningful rank, spread or uniformity."""
    if len(ds) < MIN_IMAGES:
        raise DataError(f"the analysis needs at least {MIN_IMAGES} images, the data has {len(ds)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.to(device).eval()
    head = head.to(device).eval() if head is not None else None
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[: min(max_images, len(ds))].sort().values
    head = head if head is not None else nn.Identity()
    aug = SimCLRAugment(image_size, augment)  # the run's own augmentation (convention, strength) when known
    g_views = g if device.type == "cpu" else None
    h, z = extract_features(encoder, ds, image_size, device, head=head, indices=idx, crop_fraction=crop_fraction)
    _, z1 = extract_features(encoder, ds, image_size, device, head=head, indices=idx, augment=aug, generator=g_views)
    _, z2 = extract_features(encoder, ds, image_size, device, head=head, indices=idx, augment=aug, generator=g_views)
    res = {
        "num_images": len(idx),
        "alignment": alignment(z1, z2),
        "uniformity": uniformity(z),
        "effective_rank_h": effective_rank(h),
        "effective_rank_z": effective_rank(z),
        "dim_h": h.shape[1],
        "dim_z": z.shape[1],
        "scaled_std_h": scaled_std(h),
        "scaled_std_z": scaled_std(z),
    }
    res["collapsed"] = bool(res["scaled_std_h"] < COLLAPSE_STD or res["effective_rank_h"] < COLLAPSE_RANK)
    res["std_per_dim_h"] = F.normalize(h.double(), dim=1).std(0).tolist()
    labels = ds.labels[idx]
    _plot_map(h, labels, ds.classes, out / "map.png", seed)
    _plot_neighbours(h, ds, idx, out / "neighbours.png", queries, neighbours, g)
    res["plots"] = [str(out / "map.png"), str(out / "neighbours.png")]
    text = json.dumps(res, indent=2) + "\n"  # ASCII: undecodable file-name bytes become \udcXX escapes
    atomic_write(out / "analysis.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    verdict = "COLLAPSED" if res["collapsed"] else "healthy"
    log(f"alignment {res['alignment']:.3f}  uniformity {res['uniformity']:.3f}  eff. rank h {res['effective_rank_h']:.1f}/{res['dim_h']}"
        f"  scaled std h {res['scaled_std_h']:.3f}  -> {verdict}")
    return res


def _plot_map(h: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path, seed: int) -> None:
    from simclr.plots import _plt

    plt = _plt()
    x = F.normalize(h.double(), dim=1).numpy()
    if effective_rank(h) < COLLAPSE_RANK or len(x) < 10:
        xy = x[:, :2] if x.shape[1] >= 2 else x.repeat(2, 1)
        title = "embedding map (degenerate: first two dimensions)"
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=seed).fit_transform(x)
        title = "t-SNE of h"
    fig, ax = plt.subplots(figsize=(6, 5.5))
    lab = labels.numpy()
    if (lab >= 0).all() and classes and len(classes) <= MAX_LEGEND:
        for c in range(len(classes)):
            m = lab == c
            ax.scatter(xy[m, 0], xy[m, 1], s=4, label=_label(classes[c]))
        ax.legend(markerscale=3, fontsize=7, loc="best")
    elif (lab >= 0).all() and classes:  # too many classes to name: colour by class index
        ax.scatter(xy[:, 0], xy[:, 1], s=4, c=lab, cmap="nipy_spectral")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=4)
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _label(text: str) -> str:
    """A class or file name as plot text: printable (undecodable bytes as \\xNN) and literal (a '$'
    would otherwise start matplotlib's mathtext, which fails on most names)."""
    return printable(text).replace("$", r"\$")


def _save(fig, path: Path) -> None:
    """Save a figure atomically as PNG (a failure keeps the previous picture, if any)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _plot_neighbours(h: torch.Tensor, ds, idx: torch.Tensor, path: Path, queries: int, k: int, g) -> None:
    from simclr.plots import _plt

    plt = _plt()
    hn = F.normalize(h, dim=1)
    q = torch.randperm(len(idx), generator=g)[:queries]
    sims = hn[q] @ hn.t()
    sims[torch.arange(len(q)), q] = -float("inf")
    nn_idx = sims.topk(min(k, len(idx) - 1), dim=1).indices
    fig, axes = plt.subplots(len(q), nn_idx.shape[1] + 1, figsize=(1.3 * (nn_idx.shape[1] + 1), 1.4 * len(q)), squeeze=False)
    for r in range(len(q)):
        row = [q[r].item()] + nn_idx[r].tolist()
        imgs = ds.get(idx[torch.tensor(row)])
        for c, img in enumerate(imgs):
            ax = axes[r, c]
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.axis("off")
            if ds.has_labels:
                ax.set_title(("query: " if c == 0 else "") + _label(ds.classes[int(ds.labels[idx[row[c]]])]), fontsize=6)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def analyze_run(cfg, log=print) -> dict:
    """``simclr analyze`` from a ``simclr.config.AnalyzeConfig``: the diagnostics of data.path into eval.out."""
    validate(cfg)
    _refuse_out_in_data(cfg.eval.out, cfg.data.path)
    inp = prepare(cfg, out=lambda run: cfg.eval.out, out_kind="dir", log=log)
    if len(inp.data) < MIN_IMAGES:
        raise DataError(f"the analysis needs at least {MIN_IMAGES} images, {printable(cfg.data.path)} has {len(inp.data)}")
    head = inp.run.head if inp.run is not None else None
    augment = None
    if inp.run is not None and isinstance(inp.run.config.get("augment"), dict):
        augment = config_from_dict({"augment": as_saved(inp.run.config)["augment"]}).augment
    return analyze(inp.encoder, head, inp.data, inp.image_size, inp.device, inp.out, max_images=cfg.analyze.max_images,
                   seed=cfg.eval.seed, log=log, crop_fraction=inp.crop_fraction, augment=augment)


def _refuse_out_in_data(out: str, data: str) -> None:
    """The pictures analyze writes would become images of an image folder they were written into."""
    d = Path(data)
    try:
        if not d.is_dir():
            return
        o, d = Path(os.path.realpath(out)), Path(os.path.realpath(d))
    except (OSError, ValueError):
        return
    if o == d or d in o.parents:
        raise ConfigError(f"--out {printable(out)} is inside the data folder {printable(data)}: the plots written there would "
                          f"be read as images next time; choose a folder outside it")
