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
(libjpeg's DCT scaling through Pillow's ``draft``: 1/2, 1/4 or 1/8 of the pixels to decode), and cuts
and resizes each view with an antialiased bicubic filter (torch's uint8 kernel, Pillow's to one level). Flip, colour, grayscale and blur stay
batched on the device (``SimCLRAugment(..., precropped=True)``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simclr.config import AugmentConfig, DataConfig
from simclr.data.decode import decode_opened, open_image, oriented_size, to_tensor

__all__ = ["sample_boxes", "official_boxes", "torchvision_boxes", "center_box", "ViewCropper", "MIN_OBJECT_COVERED"]

MIN_OBJECT_COVERED = 0.1  # the official crop's min_object_covered: a box covers at least 10% of the image
_OFFICIAL_ATTEMPTS = 100
_TORCHVISION_ATTEMPTS = 10
_TF_MIN_AREA = 10  # TF rejects boxes of fewer pixels (SatisfiesOverlapConstraints' kMinArea)


def _rand(shape, device, g) -> torch.Tensor:
    # float64 so that pixel rounding matches TF's for any image size; MPS has no float64
    dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
    return torch.rand(shape, device=device, generator=g, dtype=dtype)


def _first_valid(ok: torch.Tensor, *cols: torch.Tensor, whole: tuple[float, ...]) -> list[torch.Tensor]:
    """For each row, the values of the first attempt where ``ok``; ``whole`` where none is."""
    n = ok.shape[0]
    found = ok.any(1)
    pick = ok.to(torch.int8).argmax(1, keepdim=True)  # first True (0 when none; replaced below)
    out = []
    for c, w in zip(cols, whole):
        v = c.gather(1, pick).squeeze(1)
        out.append(torch.where(found, v, torch.full((n,), w, dtype=v.dtype, device=v.device)))
    return out


def official_boxes(n: int, height: int, width: int, generator=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                   device="cpu", attempts: int = _OFFICIAL_ATTEMPTS) -> torch.Tensor:
    """TF's ``sample_distorted_bounding_box`` for the whole-image object box: float64 (n, 4) boxes
    (x0, y0, w, h) in pixels of an image of ``height`` x ``width`` (see the module docstring)."""
    H, W = float(height), float(width)
    min_area, max_area = scale[0] * W * H, scale[1] * W * H
    aspect = _rand((n, attempts), device, generator) * (ratio[1] - ratio[0]) + ratio[0]
    u_h, u_y, u_x = (_rand((n, attempts), device, generator) for _ in range(3))
    # torch.round is round-half-to-even, as lrintf in the default rounding mode.
    h = torch.round(torch.sqrt(min_area / aspect))
    max_h = torch.round(torch.sqrt(max_area / aspect))
    # The largest height whose rounded width still fits: int((W + 0.5 - eps) / aspect), minus one if not.
    too_wide = torch.round(max_h * aspect) > W
    fit_h = torch.floor((W + 0.5 - 1e-7) / aspect)
    fit_h = torch.where(torch.round(fit_h * aspect) > W, fit_h - 1, fit_h)
    max_h = torch.where(too_wide, fit_h, max_h).clamp_max(H)
    h = torch.minimum(h, max_h)
    h = h + torch.where(h < max_h, torch.floor(u_h * (max_h - h + 1)), torch.zeros_like(h))
    w = torch.round(h * aspect)
    area = w * h
    # TF's repairs of rounding: one pixel taller if too small, then one shorter if too large.
    small = area < min_area
    h = torch.where(small, h + 1, h)
    w = torch.where(small, torch.round(h * aspect), w)
    area = w * h
    large = area > max_area
    h = torch.where(large, h - 1, h)
    w = torch.where(large, torch.round(h * aspect), w)
    area = w * h
    ok = (area >= min_area) & (area <= max_area) & (w <= W) & (h <= H) & (w > 0) & (h > 0)
    ok &= (area >= _TF_MIN_AREA) & (area / (W * H) >= MIN_OBJECT_COVERED)
    y = torch.where(h < H, torch.floor(u_y * (H - h)), torch.zeros_like(h))
    x = torch.where(w < W, torch.floor(u_x * (W - w)), torch.zeros_like(w))
    x, y, w, h = _first_valid(ok, x, y, w, h, whole=(0.0, 0.0, W, H))
    return torch.stack((x, y, w, h), 1)


def torchvision_boxes(n: int, height: int, width: int, generator=None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                      device="cpu", attempts: int = _TORCHVISION_ATTEMPTS) -> torch.Tensor:
    """``RandomResizedCrop``'s sampler (area uniform, aspect log-uniform): float64 (n, 4) boxes
    (x0, y0, w, h); the whole image when every attempt fails."""
    H, W = float(height), float(width)
    target = H * W * (_rand((n, attempts), device, generator) * (scale[1] - scale[0]) + scale[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(_rand((n, attempts), device, generator) * (hi - lo) + lo)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    w, h = _first_valid(ok, w, h, whole=(W, H))
    x = torch.floor(_rand(n, device, generator) * (W - w + 1))
    y = torch.floor(_rand(n, device, generator) * (H - h + 1))
    return torch.stack((x, y, w, h), 1)


_SAMPLERS = {"official": official_boxes, "torchvision": torchvision_boxes}


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

    ``cropper(src, generator)`` takes a file path or the encoded bytes and returns uint8 (2, 3, S, S):
    both views' boxes are drawn from ``generator`` over the image as it is shown (EXIF orientation
    applied), the file is decoded once, and each box is resized to S x S with antialiasing. Raises
    ``BadImageError`` (the reason only) for anything unusable.
    """

    def __init__(self, size: int, cfg: AugmentConfig | None = None, max_pixels: int = DataConfig.max_pixels,
                 reduced_decode: bool = True):
        self.size, self.cfg = int(size), cfg or AugmentConfig()
        self.max_pixels, self.reduced_decode = max_pixels, reduced_decode

    def boxes(self, height: int, width: int, generator=None) -> torch.Tensor:
        """The two views' boxes (x0, y0, w, h), float64 (2, 4), in pixels of the oriented image."""
        return sample_boxes(2, height, width, self.cfg, generator)

    def __call__(self, src: str | Path | bytes, generator: torch.Generator | None = None) -> torch.Tensor:
        with open_image(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src, self.max_pixels) as im:
            W, H, swapped = oriented_size(im)
            boxes = self.boxes(H, W, generator)
            fx = fy = 1.0
            if self.reduced_decode:
                # Each crop side may shrink by up to r and still give S pixels after the resize.
                r = float((boxes[:, 2:].min(1).values / self.size).min())
                if r >= 2:
                    want = (math.ceil(W / r), math.ceil(H / r))
                    got = im.draft(None, want[::-1] if swapped else want)  # draft works in the stored frame
                    if got is not None:
                        sw, sh = got[1][2], got[1][3]  # the original size divided by the chosen scale
                        fx, fy = ((sh, sw) if swapped else (sw, sh))
                        fx, fy = fx / W, fy / H
            rgb = decode_opened(im)
        s = self.size
        if (fx, fy) != (1.0, 1.0):
            # Decoded at a reduced scale: the boxes have fractional corners there, which Pillow's resize takes.
            return torch.stack([to_tensor(rgb.resize((s, s), Image.BICUBIC, box=(x0 * fx, y0 * fy, (x0 + w) * fx, (y0 + h) * fy),
                                                     reducing_gap=None)) for x0, y0, w, h in boxes.tolist()])
        # Whole pixels: (1, 3, H, W) over the decoded HWC pixels is channels-last, which torch's uint8
        # antialiased bicubic resize handles about 3x faster than Pillow (same a = -0.5 kernel, within a level).
        frame = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)
        views = []
        for x0, y0, w, h in boxes.long().tolist():
            crop = frame[:, :, y0 : y0 + h, x0 : x0 + w]
            views.append(F.interpolate(crop, size=(s, s), mode="bicubic", antialias=True, align_corners=False))
        return torch.cat(views).contiguous()
