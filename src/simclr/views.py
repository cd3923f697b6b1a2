"""``simclr views``: what the training augmentation does to the first images of a run.

    simclr views --data PATH --out DIR [--n 64] [--config RECIPE.yaml] [any pretrain key]

writes

    DIR/views.npy   uint8 (n, 2, 3, S, S): the two views of the first n images of epoch 0, exactly as
                    pretraining computes them before normalisation (float views in [0, 1] -> round(x * 255))
    DIR/views.png   one row per image (at most ``rows``): the original | view 1 | view 2

The views come from the training code path itself, not from a re-implementation: the data is loaded
and the auto keys resolved by ``simclr.train.pretrain.load_training_data``; the augmentation and epoch 0's
batches come from ``simclr.train.trainer.training_input`` at the training batch size (the Trainer's own
builder: ``Batches`` with the loader-side ``ViewCropper`` for streamed images); and step k's views are ``SimCLRAugment.views`` drawn with
``simclr.runtime.step_generator(seed, k, rank 0, device)``. So with the same config (seed, batch size,
device) the views of image i are the ones a single-process ``simclr pretrain`` feeds the model at step
i // batch_size. More images than epoch 0's full batches hold are cut to those, with a note.

The original is the image as decoded: the in-memory image (what the random crop of small images is
drawn from), or, for streamed images, the whole frame, fitted into a tile keeping its aspect ratio, so
that one sees what part of the picture each view shows. Nothing but DIR/views.png and DIR/views.npy is
written (atomically); no run folder is created or touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from simclr.checkpoint import atomic_write
from simclr.config import Config, ConfigError, ViewsConfig, validate
from simclr.data import ImageSet
from simclr.data.decode import decode_opened, open_image
from simclr.data.errors import DataError, printable
from simclr.runtime import pick_device, step_generator
from simclr.train.trainer import training_input

__all__ = ["write_views", "training_views", "pretrain_config", "to_uint8", "compose", "MAX_ROWS"]

MAX_ROWS = 32  # rows of views.png by default; views.npy always holds all n images
_MIN_TILE, _MAX_TILE = 96, 256  # tiles of the PNG: small views are enlarged (nearest), large ones shrunk
_PAD = 4
_BACKGROUND = (255, 255, 255)
_LETTERBOX = (40, 40, 40)


def pretrain_config(cfg: Config | ViewsConfig) -> Config:
    """The pretraining config inside a ``ViewsConfig`` (a copy; a ``Config`` is copied as it is)."""
    return Config(**{f.name: dataclasses.replace(getattr(cfg, f.name)) for f in dataclasses.fields(Config)})


def to_uint8(v: torch.Tensor) -> torch.Tensor:
    """Float views in [0, 1] -> uint8, round(x * 255)."""
    return v.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def training_views(cfg: Config, train: ImageSet, n: int):
    """The first ``n`` images of epoch 0 of a pretraining run on ``train`` and their views, as training computes them.

    ``cfg`` is a resolved, validated pretraining config (``load_training_data``). Returns (uint8 views
    (n', 2, 3, S, S) on the CPU, dataset indices (n',), steps used) with n' = min(n, images in epoch 0's
    full batches). Same pieces as ``Trainer`` in a single process: ``training_input`` at ``train.batch_size``,
    ``SimCLRAugment.views`` with ``step_generator(seed, step, 0, device)``.
    """
    t = cfg.train
    device = pick_device(t.device)
    augment, batches = training_input(cfg, train, t.batch_size)
    n = min(n, len(batches) * t.batch_size)
    views: list[torch.Tensor] = []
    index: list[torch.Tensor] = []
    got = steps = 0
    with contextlib.closing(batches.epoch(0)) as epoch:  # closing stops the loader workers at once
        for step, (x, _, idx) in enumerate(epoch):
            g = step_generator(t.seed, step, 0, device)
            v1, v2 = augment.views(x.to(device), g)
            take = min(len(idx), n - got)
            views.append(to_uint8(torch.stack((v1[:take], v2[:take]), 1)).cpu())
            index.append(idx[:take].cpu())
            got, steps = got + take, step + 1
            if got >= n:
                break
    return torch.cat(views), torch.cat(index), steps


def write_views(cfg: Config | ViewsConfig, out: str | Path, n: int, log=print, rows: int = MAX_ROWS) -> dict:
    """Write ``out``/views.npy and ``out``/views.png for the first ``n`` images of epoch 0 (see the module docstring).

    ``cfg`` is a pretraining ``Config`` or a ``ViewsConfig`` (its pretraining keys are used; ``out``, ``n`` and
    ``rows`` are the arguments). Returns what was written: paths, n, image_size, streamed, steps, ...
    Raises ConfigError or DataError (one line) for bad values, missing data or an ``out`` that is a file.
    """
    validate(cfg)  # every key, before any work
    for name, value in (("views.n", n), ("views.rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if out is None or not str(out):
        raise ConfigError("--out is required (a folder for views.png and views.npy)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {printable(out)} is a file; give a folder for views.png and views.npy")
    from simclr.train.pretrain import load_training_data  # the training package is heavy; only when needed

    pcfg = pretrain_config(cfg)
    pcfg.data.val_path = ""  # the monitor's labelled set plays no part in the views
    pcfg, train, _ = load_training_data(pcfg)
    size, b = pcfg.data.image_size, pcfg.train.batch_size
    views, index, steps = training_views(pcfg, train, n)
    if len(views) < n:
        log(f"note: epoch 0 has {len(views)} images in full batches of {b} ({len(train)} images in the data); "
            f"writing views of {len(views)}, not {n}")
    n = len(views)
    shown = min(rows, n)
    where = "cut from the full frame by the loader" if train.streamed else "drawn from the images in memory"
    log(f"views: the first {n} images of epoch 0 (seed {pcfg.train.seed}, {steps} step(s) of batch {b}), {size} px, "
        f"{where}; views.png shows {shown}")
    originals = [_original(train, int(i), _tile_side(size)) for i in index[:shown].tolist()]
    caption = (f"first {shown} of {n} images of epoch 0 (seed {pcfg.train.seed}, batch {b}, {size} px"
               f"{', streamed: whole frame shown' if train.streamed else ''}); views.npy holds all {n}")
    png, npy = out / "views.png", out / "views.npy"
    arr = views.numpy()
    atomic_write(npy, lambda tmp: _save_npy(tmp, arr))
    image = compose(originals, arr[:shown], caption)
    atomic_write(png, lambda tmp: image.save(tmp, format="PNG"))
    log(f"wrote {printable(png)} and {printable(npy)} (uint8 {tuple(arr.shape)})")
    return {"png": str(png), "npy": str(npy), "n": n, "image_size": size, "streamed": train.streamed, "shown": shown,
            "steps": steps, "batch_size": b, "seed": pcfg.train.seed, "device": str(pick_device(pcfg.train.device))}


def _save_npy(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to the temporary name
        np.save(f, arr)


# -- the picture -----------------------------------------------------------------------------


def _tile_side(size: int) -> int:
    """Side of one tile of views.png for views of ``size`` pixels: small views enlarged by a whole factor."""
    if size < _MIN_TILE:
        return size * math.ceil(_MIN_TILE / size)
    return min(size, _MAX_TILE)


def _fit_tile(im: Image.Image, tile: int) -> Image.Image:
    """``im`` scaled to fit a ``tile`` square, keeping its aspect ratio, centred on a dark letterbox."""
    w, h = im.size
    enlarge = max(w, h) < tile
    im = ImageOps.contain(im, (tile, tile), Image.NEAREST if enlarge else Image.LANCZOS)
    canvas = Image.new("RGB", (tile, tile), _LETTERBOX)
    canvas.paste(im, ((tile - im.size[0]) // 2, (tile - im.size[1]) // 2))
    return canvas


def _original(train: ImageSet, i: int, tile: int) -> Image.Image:
    """Image ``i`` as decoded (the whole frame of a streamed file), fitted into a tile."""
    if not train.streamed:
        return _fit_tile(Image.fromarray(train.images[i].permute(1, 2, 0).numpy()), tile)
    try:
        with open_image(train.source(i), train.max_pixels) as im:
            im.draft("RGB", (tile, tile))  # JPEG: decode at a reduced scale that still covers the tile
            return _fit_tile(decode_opened(im), tile)
    except DataError:  # the file broke since its views were cut: an empty tile, not a failed command
        return Image.new("RGB", (tile, tile), _LETTERBOX)


def _view_tile(v: np.ndarray, tile: int) -> Image.Image:
    im = Image.fromarray(np.ascontiguousarray(v.transpose(1, 2, 0)))
    if im.size[0] == tile:
        return im
    return im.resize((tile, tile), Image.NEAREST if im.size[0] < tile else Image.LANCZOS)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def compose(originals: list[Image.Image], views: np.ndarray, caption: str) -> Image.Image:
    """The grid of views.png: a header, one row (original | view 1 | view 2) per image, and a caption.

    ``originals`` are tiles (RGB squares, all the same side); ``views`` uint8 (rows, 2, 3, S, S).
    """
    rows = len(originals)
    tile = originals[0].size[0] if originals else _tile_side(int(views.shape[-1]))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(math.ceil(probe.textbbox((0, 0), "Ag", font=font)[3])) + 3
    width = 3 * tile + 4 * _PAD
    lines = _wrap(probe, caption, font, width - 2 * _PAD)
    top = _PAD + line_h
    height = top + rows * (tile + _PAD) + _PAD + len(lines) * line_h
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(("original", "view 1", "view 2")):
        x = _PAD + c * (tile + _PAD)
        draw.text((x + (tile - draw.textlength(title, font=font)) / 2, _PAD), title, fill=(0, 0, 0), font=font)
    for r in range(rows):
        y = top + r * (tile + _PAD)
        canvas.paste(originals[r], (_PAD, y))
        for c in range(2):
            canvas.paste(_view_tile(views[r, c], tile), (_PAD + (c + 1) * (tile + _PAD), y))
    y = top + rows * (tile + _PAD) + _PAD // 2
    for line in lines:
        draw.text((_PAD, y), line, fill=(60, 60, 60), font=font)
        y += line_h
    return canvas
