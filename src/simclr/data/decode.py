"""Decoding one image file into an RGB picture, and fitting it to a fixed square load size.

Only the header is read by ``check_image`` (cheap, used when indexing a folder); ``decode_image``
reads the pixels and normalises every mode Pillow knows to 8-bit RGB: EXIF orientation is applied,
16/32-bit grayscale is scaled (not clipped) to 8 bits, transparency is composited over white.
Anything unusable (empty, truncated, not an image, more pixels than the limit) raises
``BadImageError`` whose message is the reason only; callers add the file name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from simclr.config import DataConfig
from simclr.data.errors import BadImageError, describe

__all__ = ["check_image", "decode_image", "open_image", "decode_opened", "oriented_size", "orientation", "orient_array", "to_rgb", "to_tensor", "fit",
           "load_fixed", "load_size_for"]

# EXIF orientations that swap width and height (transpose, rotate 90, transverse, rotate 270).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def open_image(src: str | Path | BinaryIO, max_pixels: int) -> Image.Image:
    """Open a file path or a binary file object lazily (header only), refusing empty files, unreadable
    headers and more than ``max_pixels`` pixels with BadImageError (the reason only)."""
    if isinstance(src, (str, os.PathLike)):
        try:
            size = os.path.getsize(src)
        except FileNotFoundError:
            raise BadImageError("file not found") from None
        except OSError as e:
            raise BadImageError(f"cannot read ({describe(e)})") from None
        if size == 0:
            raise BadImageError("empty file")
    elif src.seek(0, os.SEEK_END) == 0:
        raise BadImageError("empty file")
    else:
        src.seek(0)
    try:
        im = Image.open(src)
    except Image.DecompressionBombError as e:
        raise BadImageError(f"refused: {str(e).split('.')[0]}") from None
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError from broken headers
        raise BadImageError(f"not a readable image ({describe(e)})") from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise BadImageError(f"refused: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (decompression bomb?)")
    if w < 1 or h < 1:
        im.close()
        raise BadImageError(f"image has no pixels ({w}x{h})")
    return im


def oriented_size(im: Image.Image) -> tuple[int, int, bool]:
    """(width, height) of an opened image as it is shown, i.e. after its EXIF orientation, and whether
    the orientation swaps the stored axes."""
    swapped = orientation(im) in _SWAPPING_ORIENTATIONS
    w, h = im.size
    return (h, w, True) if swapped else (w, h, False)


def decode_opened(im: Image.Image) -> Image.Image:
    """Decode the pixels of an image from ``open_image`` to RGB (see ``decode_image``). The result may be
    ``im`` itself (an RGB image shown as stored): use it before closing ``im``."""
    try:
        im.load()
        return to_rgb(im)
    except Exception as e:  # truncated data, broken streams
        raise BadImageError(f"cannot decode ({describe(e)})") from None


def check_image(path: str | Path, max_pixels: int = DataConfig.max_pixels) -> tuple[int, int]:
    """Read only the header: (width, height), or BadImageError."""
    with open_image(path, max_pixels) as im:
        return im.size


def decode_image(path: str | Path, max_pixels: int = DataConfig.max_pixels) -> Image.Image:
    """Open an image as RGB, applying its EXIF orientation; grayscale, 16-bit, CMYK, RGBA and palette
    images become RGB. Raises BadImageError for anything unusable."""
    im = open_image(path, max_pixels)
    try:
        rgb = decode_opened(im)
    except BaseException:
        im.close()
        raise
    if rgb is not im:
        im.close()
    return rgb  # a loaded image opened from a path has released its file already


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB (EXIF orientation applied, alpha over white); ``im`` itself when it is
    RGB already and shown as stored (no copy: this runs once per training image)."""
    if orientation(im) not in (None, 1):
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # 16-bit and 32-bit grayscale: scale to 8 bits instead of clipping at 255
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "RGBA" or im.mode == "LA" or (im.mode == "P" and "transparency" in im.info):
        # transparent pixels over white, as a viewer shows them
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im if im.mode == "RGB" else im.convert("RGB")


def orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag of an opened image (1-8), None when absent or unreadable."""
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a broken EXIF block: shown as stored
        return None


# EXIF orientation -> the numpy operations that show an (H, W, C) array as ImageOps.exif_transpose does.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


# Which axes (x, y) of the shown image run opposite to the stored ones, per EXIF orientation.
MIRRORED_AXES = {2: (True, False), 3: (True, True), 4: (False, True), 6: (True, False), 7: (True, True), 8: (False, True)}


def orient_array(a: np.ndarray, tag: int | None) -> np.ndarray:
    """An (H, W, C) array as its EXIF orientation ``tag`` shows it (a view; the array itself for 1 or None)."""
    return _ORIENT[tag](a) if tag in _ORIENT else a


def to_tensor(im: Image.Image) -> torch.Tensor:
    """An RGB picture as uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def fit(im: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` and centre-crop a square."""
    w, h = im.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
        left, top = (nw - size) // 2, (nh - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def load_fixed(path: str | Path, size: int, max_pixels: int = DataConfig.max_pixels) -> torch.Tensor:
    """Decode ``path`` and fit it to uint8 (3, size, size); BadImageError (the reason) if unusable."""
    im = decode_image(path, max_pixels)
    try:
        return to_tensor(fit(im, size))
    except Exception as e:  # pragma: no cover - a decoded image that still cannot be resized
        raise BadImageError(f"cannot resize ({describe(e)})") from None


def load_size_for(image_size: int) -> int:
    """Load resolution for streamed images: 8/7 of the training size (256 for 224)."""
    return int(math.ceil(image_size * 8 / 7))
