"""Crop geometry: the random crop boxes of training views, the centre box of evaluation views, and the
loader-side cut of two training views out of the full frame of a large image.

Two samplers of the random resized crop (``augment.convention``):

* ``official`` transcribes TensorFlow's ``sample_distorted_bounding_box`` as the official code calls it
  (tf2/data_util.py: ``distorted_bounding_box_crop`` with the whole image as the object box,
  ``min_object_covered=0.1``, 100 attempts): per attempt an aspect ratio uniform in the range, then an
  integer HEIGHT uniform between the heights of the smallest and largest allowed areas (so areas are
  not uniform: mean 0.42 of the image against 0.48), rounding repairs, and the box must cover at least
  10% of the image; the offset is uniform in [0, side - crop) (never touching the far edge unless full).
  When every attempt fails, the whole image.
* ``torchvision`` is ``RandomResizedCrop``'s sampler: area uniform, aspect log-uniform, 10 attempts;
  here the whole image when all fail, as TF does, instead of torchvision's clamped centre crop.

Both are vectorised over images and attempts: the same code draws boxes for a batch on the training
device and two boxes per image in a loader worker.

Large streamed images are not squashed to a square before cropping (that would hide the edges of every
non-square photo from every view): ``ViewCropper`` draws both views' boxes over the whole frame, decodes
the file once at the smallest JPEG scale that still gives each crop at least the training size
(libjpeg-turbo through simplejpeg, straight into numpy, at a DCT scale M/8; Pillow's ``draft`` at 1/2,
1/4 or 1/8 for JPEGs simplejpeg refuses or when it is not installed), and cuts and resizes each view with
an antialiased bicubic filter (torch's uint8 kernel, Pillow's to one level). Flip, colour, grayscale and blur stay
batched on the device (``SimCLRAugment(..., precropped=True)``).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simclr.config import AugmentConfig, DataConfig
from simclr.data.decode import MIRRORED_AXES, decode_opened, open_image, orient_array, orientation, oriented_size, to_tensor
from simclr.data.errors import BadImageError, describe

try:  # libjpeg-turbo without Pillow's copies; Pillow decodes when it is missing
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - a platform without its wheel
    _simplejpeg = None

__all__ = ["sample_boxes", "official_boxes", "torchvision_boxes", "center_box", "ViewCropper", "MIN_OBJECT_COVERED"]

MIN_OBJECT_COVERED = 0.1  # the official crop's min_object_covered: a box covers at least 10% of the image
_OFFICIAL_ATTEMPTS = 100
_TORCHVISION_ATTEMPTS = 10
_TF_MIN_AREA = 10  # TF rejects boxes of fewer pixels (SatisfiesOverlapConstraints' kMinArea)


def _uniforms(k: int, shape: tuple[int, int], device, g) -> list:
    """k arrays of uniform draws from ``g``: float64 numpy arrays on the CPU (a loader worker draws two
    boxes per image, where numpy's small-array ops cost a third of torch's), tensors elsewhere. The draws,
    and so the boxes, are the same either way."""
    dev = torch.device(device)
    # float64 so that pixel rounding matches TF's for any image size; MPS has no float64
    dtype = torch.float32 if dev.type == "mps" else torch.float64
    draws = [torch.rand(shape, device=dev, generator=g, dtype=dtype) for _ in range(k)]
    return [d.numpy() for d in draws] if dev.type == "cpu" else draws


class _Ops:
    """The few array functions the samplers need, for numpy arrays or torch tensors alike."""

    def __init__(self, like):
        self.np = isinstance(like, np.ndarray)
        m = np if self.np else torch
        self.sqrt, self.round, self.floor, self.exp, self.where = m.sqrt, m.round, m.floor, m.exp, m.where
        self.minimum = m.minimum

    def first_valid(self, ok, *cols, whole: tuple[float, ...]) -> list:
        """For each row, the values of the first attempt where ``ok``; ``whole`` where none is."""
        found = ok.any(1)
        pick = (ok * 1).argmax(1)[:, None]  # first True (0 when none; replaced below)
        take = np.take_along_axis if self.np else torch.take_along_dim
        return [self.where(found, take(c, pick, 1)[:, 0], w) for c, w in zip(cols, whole)]

    def stack(self, cols) -> torch.Tensor:
        return torch.from_numpy(np.stack(cols, 1)) if self.np else torch.stack(cols, 1)


def official_boxes(n: int, height: int, width: int, generator=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                   device="cpu", attempts: int = _OFFICIAL_ATTEMPTS) -> torch.Tensor:
    """TF's ``sample_distorted_bounding_box`` for the whole-image object box: float64 (n, 4) boxes
    (x0, y0, w, h) in pixels of an image of ``height`` x ``width`` (see the module docstring)."""
    H, W = float(height), float(width)
    min_area, max_area = scale[0] * W * H, scale[1] * W * H
    u_a, u_h, u_y, u_x = _uniforms(4, (n, attempts), device, generator)
    xp = _Ops(u_a)
    aspect = u_a * (ratio[1] - ratio[0]) + ratio[0]
    # round is round-half-to-even in numpy and torch, as lrintf in the default rounding mode.
    h = xp.round(xp.sqrt(min_area / aspect))
    max_h = xp.round(xp.sqrt(max_area / aspect))
    # The largest height whose rounded width still fits: int((W + 0.5 - eps) / aspect), minus one if not.
    too_wide = xp.round(max_h * aspect) > W
    fit_h = xp.floor((W + 0.5 - 1e-7) / aspect)
    fit_h = xp.where(xp.round(fit_h * aspect) > W, fit_h - 1, fit_h)
    max_h = xp.where(too_wide, fit_h, max_h)
    max_h = xp.where(max_h > H, H, max_h)
    h = xp.minimum(h, max_h)
    h = h + xp.where(h < max_h, xp.floor(u_h * (max_h - h + 1)), 0.0)
    w = xp.round(h * aspect)
    area = w * h
    # TF's repairs of rounding: one pixel taller if too small, then one shorter if too large.
    small = area < min_area
    h = xp.where(small, h + 1, h)
    w = xp.where(small, xp.round(h * aspect), w)
    area = w * h
    large = area > max_area
    h = xp.where(large, h - 1, h)
    w = xp.where(large, xp.round(h * aspect), w)
    area = w * h
    ok = (area >= min_area) & (area <= max_area) & (w <= W) & (h <= H) & (w > 0) & (h > 0)
    ok = ok & (area >= _TF_MIN_AREA) & (area / (W * H) >= MIN_OBJECT_COVERED)
    y = xp.where(h < H, xp.floor(u_y * (H - h)), 0.0)
    x = xp.where(w < W, xp.floor(u_x * (W - w)), 0.0)
    return xp.stack(xp.first_valid(ok, x, y, w, h, whole=(0.0, 0.0, W, H)))


def torchvision_boxes(n: int, height: int, width: int, generator=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      device="cpu", attempts: int = _TORCHVISION_ATTEMPTS) -> torch.Tensor:
    """``RandomResizedCrop``'s sampler (area uniform, aspect log-uniform): float64 (n, 4) boxes
    (x0, y0, w, h); the whole image when every attempt fails."""
    H, W = float(height), float(width)
    u_area, u_aspect = _uniforms(2, (n, attempts), device, generator)
    u_x, u_y = (u[:, 0] for u in _uniforms(2, (n, 1), device, generator))
    xp = _Ops(u_area)
    target = H * W * (u_area * (scale[1] - scale[0]) + scale[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = xp.exp(u_aspect * (hi - lo) + lo)
    w = xp.round(xp.sqrt(target * aspect))
    h = xp.round(xp.sqrt(target / aspect))
    ok = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    w, h = xp.first_valid(ok, w, h, whole=(W, H))
    x = xp.floor(u_x * (W - w + 1))
    y = xp.floor(u_y * (H - h + 1))
    return xp.stack((x, y, w, h))


_SAMPLERS = {"official": official_boxes, "torchvision": torchvision_boxes}


def _read(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as e:
        raise BadImageError(f"cannot read ({describe(e)})") from None


def sample_boxes(n: int, height: int, width: int, cfg: AugmentConfig, generator=None, device="cpu") -> torch.Tensor:
    """n random crop boxes (x0, y0, w, h), float64 (n, 4), for an image of ``height`` x ``width`` with
    the sampler of ``cfg.convention``, or the whole image for every view when ``cfg.crop`` is off."""
    if not cfg.crop:
        return torch.tensor([[0.0, 0.0, float(width), float(height)]], device=device).expand(n, 4)
    return _SAMPLERS[cfg.convention](n, height, width, generator, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), device)


def center_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """The evaluation crop of the official code (tf2/data_util.py ``center_crop`` for a square output):
    a centred square of side round(fraction x shorter side); (top, left, side_h, side_w).

    Offsets round up, as the official ``((image - crop) + 1) // 2``; round is half-to-even (tf.math.rint).
    """
    side = min(height, width)
    ch = cw = max(1, int(round(fraction * side)))
    return (height - ch + 1) // 2, (width - cw + 1) // 2, ch, cw


class ViewCropper:
    """Loader-side half of the training augmentation for large images: two crops from the full frame.

    Args:
        size: the training side S.
        cfg: the augmentation settings (crop, crop_scale, crop_ratio, convention).
        max_pixels: images with more pixels are refused (decompression bombs).
        reduced_decode: decode JPEGs at the smallest DCT scale that keeps every crop at least S pixels
            on each side (False: always decode every pixel; for comparisons).
        crops: whether each view gets a random box (``SimCLRAugment.view_crops()``); a view whose
            transformations have no crop gets the whole frame (its box is still drawn, so the draws of
            the other view and of later images do not change).

    ``cropper(src, generator)`` takes a file path or the encoded bytes and returns uint8 (2, 3, S, S):
    both views' boxes are drawn from ``generator`` over the image as it is shown (EXIF orientation
    applied), the file is decoded once, and each box is resized to S x S with antialiasing. Raises
    ``BadImageError`` (the reason only) for anything unusable.
    """

    def __init__(self, size: int, cfg: AugmentConfig | None = None, max_pixels: int = DataConfig.max_pixels,
                 reduced_decode: bool = True, crops: tuple[bool, bool] = (True, True)):
        self.size, self.cfg = int(size), cfg or AugmentConfig()
        self.max_pixels, self.reduced_decode = max_pixels, reduced_decode
        self.crops = tuple(bool(c) for c in crops)

    def boxes(self, height: int, width: int, generator=None) -> torch.Tensor:
        """The two views' boxes (x0, y0, w, h), float64 (2, 4), in pixels of the oriented image."""
        boxes = sample_boxes(2, height, width, self.cfg, generator)
        if all(self.crops):
            return boxes
        boxes = boxes.clone()
        for i, crop in enumerate(self.crops):
            if not crop:
                boxes[i] = torch.tensor([0.0, 0.0, float(width), float(height)], dtype=boxes.dtype)
        return boxes

    def __call__(self, src: str | Path | bytes, generator: torch.Generator | None = None) -> torch.Tensor:
        data = bytes(src) if isinstance(src, (bytes, bytearray)) else None
        with open_image(io.BytesIO(data) if data is not None else src, self.max_pixels) as im:
            W, H, swapped = oriented_size(im)
            boxes = self.boxes(H, W, generator)
            # Each crop side may shrink by r and still give S pixels after the resize.
            r = float((boxes[:, 2:].min(1).values / self.size).min()) if self.reduced_decode else 1.0
            tag = orientation(im)
            decoded = None
            if _simplejpeg is not None and im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L"):  # MPO: phone photos
                decoded = self._decode_jpeg(data if data is not None else _read(src), im.size, tag, r)
            # Pillow for the rest, and for JPEGs libjpeg-turbo refuses in strict mode but Pillow reads
            # (a corrupt marker it can step over): the same files are usable as everywhere else.
            frame, f = decoded if decoded is not None else self._decode_pillow(im, r, W, H, swapped)
            # A reduced decode rounds the size up: the last row/column holds only part of a pixel, and a
            # mirrored axis puts that partial pixel first, so the boxes shift by what it lacks.
            mx, my = MIRRORED_AXES.get(tag, (False, False))
            shift = ((frame.shape[1] - W * f) if mx else 0.0, (frame.shape[0] - H * f) if my else 0.0)
            return self._cut(frame, boxes, f, shift)  # inside: the frame may share memory with ``im``

    def _decode_jpeg(self, data: bytes, stored: tuple[int, int], tag: int | None, r: float) -> tuple[np.ndarray, float] | None:
        """libjpeg-turbo straight into an RGB array (about twice Pillow's speed with its copy), at the smallest
        DCT scale M/8 that keeps every crop at least S pixels when r >= 2; (oriented frame, scale), or None
        when it refuses the data."""
        sw, sh = stored
        mins = dict(min_width=math.ceil(sw / r), min_height=math.ceil(sh / r)) if r >= 2 else {}
        try:
            a = _simplejpeg.decode_jpeg(data, colorspace="RGB", **mins)
        except Exception:  # corrupt or truncated data (strict: recoverable errors too): Pillow decides
            return None
        dh, dw = a.shape[:2]
        f = 1.0
        if (dw, dh) != (sw, sh):
            m = round(8 * dw / sw)  # libjpeg scales by M/8, rounding the size up
            f = m / 8 if (math.ceil(sw * m / 8), math.ceil(sh * m / 8)) == (dw, dh) else dw / sw
        return np.ascontiguousarray(orient_array(a, tag)), f  # a copy only for a rotated or mirrored photo

    def _decode_pillow(self, im: Image.Image, r: float, W: int, H: int, swapped: bool) -> tuple[np.ndarray, float]:
        """Pillow for every other image: JPEGs through ``draft`` (1/2, 1/4, 1/8) when r >= 2."""
        f, stored_w = 1.0, im.size[0]
        if r >= 2:
            want = (math.ceil(W / r), math.ceil(H / r))
            got = im.draft(None, want[::-1] if swapped else want)  # draft works in the stored frame
            if got is not None:
                f = got[1][2] / stored_w  # got[1]: the stored size divided by the chosen scale
        return np.asarray(decode_opened(im)), f

    def _cut(self, frame: np.ndarray, boxes: torch.Tensor, f: float, shift: tuple[float, float]) -> torch.Tensor:
        """Both views (2, 3, S, S) uint8 from the (H, W, 3) frame decoded at scale ``f`` of the shown image,
        whose origin lies at ``shift`` (x, y) pixels of the frame."""
        s = self.size
        if f != 1.0:
            # A reduced scale: the boxes have fractional corners there, which Pillow's resize takes.
            rgb = Image.fromarray(np.ascontiguousarray(frame))
            sx, sy = shift
            return torch.stack([to_tensor(rgb.resize((s, s), Image.BICUBIC, reducing_gap=None,
                                                     box=(x0 * f + sx, y0 * f + sy, (x0 + w) * f + sx, (y0 + h) * f + sy)))
                                for x0, y0, w, h in boxes.tolist()])
        # Whole pixels: (1, 3, H, W) over the HWC frame is channels-last, which torch's uint8 antialiased
        # bicubic resize handles about 3x faster than Pillow (same a = -0.5 kernel, within a level).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only frame: it is only read
            t = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0)
        views = []
        for x0, y0, w, h in boxes.long().tolist():
            crop = t[:, :, y0 : y0 + h, x0 : x0 + w]
            views.append(F.interpolate(crop, size=(s, s), mode="bicubic", antialias=True, align_corners=False))
        return torch.cat(views)
