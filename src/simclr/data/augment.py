"""SimCLR's data augmentation, batched on the training device.

Data loading only decodes; every random transformation happens here, on whole batches, on the
device that trains (the GPU when there is one), with an independent random draw of every
parameter for every image. The chain follows the paper (appendix A) and the official code:

    random resized crop (area 0.08-1, aspect 3/4-4/3, bicubic) + horizontal flip
    -> colour distortion with p=0.8: brightness, contrast, saturation (0.8s), hue (0.2s),
       applied in an independent random order for each image, clipped to [0, 1] after each
    -> grayscale with p=0.2
    -> Gaussian blur with p=0.5, sigma in [0.1, 2.0], kernel 10% of the side (off at 32px)

``augment.convention`` picks the official code's version of three pieces (the default) or
torchvision's: the crop sampler (``simclr.data.crop``), saturation (scale S in HSV and clip, as
tf.image.adjust_saturation; or blend with the grayscale image) and blur (zero padding and one sigma
per batch of views, as the official ``batch_random_blur``; or reflect padding and one sigma per image).
Large streamed images arrive already cropped from their full frame by the loader
(``simclr.data.crop.ViewCropper``); call with ``precropped=True`` to do the rest.

The paper's other transformations (its Figure 4) are there for its ablations (Figure 5), each with a per-image
switch drawn with its probability, and apply where a view's list names them (``augment.view1`` / ``view2``):

    cutout   one square of side round(cutout_frac x S) (default half the side), uniformly placed wholly inside
             the view, set to 0 (black) in every channel
    sobel    gradient magnitude of the grayscale image (3x3 Sobel kernels, reflect padding, as tf.image.sobel_edges),
             divided by the image's largest magnitude (so each Sobel view spans [0, 1]; a flat image gives 0),
             written to all three channels
    noise    x + noise_std x N(0, 1), independent per pixel and channel, clipped to [0, 1]
    rotate   by 90, 180 or 270 degrees counter-clockwise (torch.rot90), equally likely

A view's list runs in its order on the view at the output size S: the image is first resized whole to S x S
(nothing to do when it already is; the loader's crop when precropped), except when the list starts with
``crop``, which cuts and resizes straight from the input as the default chain does; a later ``crop`` crops the
S x S view. ``simclr`` is ``crop,color,blur`` (the chain above); ``none`` (or "") leaves only the resize. So for
the paper's Figure 5 protocol (one view transformed, the other "left as is"), view2 ``none`` is the image itself
at the output size: a 32 px CIFAR image unchanged, a larger in-memory image resized whole. (The paper crops every
ImageNet image once before both branches only to bring them to one size.) Precropped views come already cropped by
the loader whatever the list says: there a ``crop`` only flips (at its place in the list), and a list without one
still sees the loader's crop.

Outputs are floats in [0, 1], as in the official code; normalisation is the model's business.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from simclr.config import AugmentConfig, ConfigError, check_section, resolve_augment
from simclr.data.crop import center_box, sample_boxes

__all__ = ["SimCLRAugment", "adjust_saturation_hsv", "center_resize", "hsv_to_rgb", "rgb_to_grayscale", "rgb_to_hsv",
           "sobel", "sobel_magnitude", "to_float"]

# ITU-R 601 luma weights, as tf.image.rgb_to_grayscale and torchvision.
_LUMA = (0.2989, 0.5870, 0.1140)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in [0, 255] or float in [0, 1] -> float32 in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x.float()


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1)."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack((h, s, maxc), 1)


# Sector i (0..5) of the hue takes r, g, b from (v, q, p, t) at these positions (the usual HSV table:
# r = v, q, p, p, t, v; g = t, v, v, q, p, p; b = p, p, t, v, v, q), packed 2 bits per sector.
_SECTOR_TABLE = ((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1))
_SECTOR_CODES = tuple(sum(row[c] << (2 * k) for k, row in enumerate(_SECTOR_TABLE)) for c in range(3))


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV with hue in [0, 1) -> RGB in [0, 1]."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # Rows: sector 0..5; columns: which of (v, q, p, t) feeds r, g, b.
    choices = torch.stack((v, q, p, t), 1)  # (B, 4, H, W)
    # Which of (v, q, p, t) feeds r, g, b in sector i: 2-bit fields of one integer per channel, read
    # by shifts (a lookup table made with torch.tensor(..., device=) is a blocking copy at every call).
    idx = torch.stack([(torch.full_like(i, code) >> (2 * i)) & 3 for code in _SECTOR_CODES], 1)  # (B, 3, H, W)
    return torch.gather(choices, 1, idx)


def center_resize(x: torch.Tensor, size: int, fraction: float = 1.0) -> torch.Tensor:
    """Deterministic evaluation view of x (B, 3, H, W): the centred square of ``fraction`` of the shorter
    side (``simclr.data.crop.center_box``, the official formula), bicubic resize (antialiased when
    shrinking) to (B, 3, size, size) float32 in [0, 1]."""
    x = to_float(x)
    _, _, h, w = x.shape
    top, left, ch, cw = center_box(h, w, fraction)
    x = x[:, :, top : top + ch, left : left + cw]
    if (ch, cw) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=min(ch, cw) > size)
    return x.clamp_(0.0, 1.0)


def adjust_saturation_hsv(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """tf.image.adjust_saturation: S of HSV times ``factor`` (B,), clipped to [0, 1]; x (B, 3, H, W)."""
    return hsv_to_rgb(_hsv_op(rgb_to_hsv(x), 2, factor, factor))


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Multiplicative, as SimCLRv2's implementation; f (B, 1, 1, 1)."""
    return x * f


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Around each channel's mean, as tf.image.adjust_contrast; f (B, 1, 1, 1)."""
    mean = x.mean((2, 3), keepdim=True)
    return (x - mean) * f + mean


def _blend_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """torchvision's saturation: a blend with the grayscale image; f (B, 1, 1, 1)."""
    gray = rgb_to_grayscale(x)
    return (x - gray) * f + gray


def _hsv_op(hsv: torch.Tensor, op: int, f_s: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """On (B, 3, H, W) HSV: op 3 rotates the hue by ``hue`` (B,); op 2 scales S by ``f_s`` and clips
    (tf.image.adjust_saturation). Returns a new tensor."""
    h, s, v = hsv.unbind(1)
    if op == 3:
        h = (h + hue.view(-1, 1, 1)) % 1.0
    else:
        s = (s * f_s.view(-1, 1, 1)).clamp(0.0, 1.0)
    return torch.stack((h, s, v), 1)


def _indexing_pays(x: torch.Tensor) -> bool:
    """Gather the images an operation applies to (less arithmetic, but data-dependent shapes that make an
    accelerator wait for the host) on the CPU in eager mode; elsewhere mask (no waiting, one compiled graph)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _uniform(n: int, lo: float, hi: float, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo


def _bernoulli(n: int, p: float, device, generator) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W): |(Gx, Gy)| of the grayscale (luma) image, 3x3 Sobel kernels
    [1, 2, 1] x [-1, 0, 1] with reflect padding (tf.image.sobel_edges'; replicate below 2 pixels), unscaled
    (0 to 4 sqrt(2)). Separable differences of shifted slices: no kernel tensor to copy to the device."""
    gray = rgb_to_grayscale(x)
    p = F.pad(gray, (1, 1, 1, 1), mode="reflect" if min(x.shape[-2:]) > 1 else "replicate")
    dx = p[..., 2:] - p[..., :-2]  # (B, 1, H + 2, W)
    dy = p[..., 2:, :] - p[..., :-2, :]  # (B, 1, H, W + 2)
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    gy = dy[..., :-2] + 2 * dy[..., 1:-1] + dy[..., 2:]
    return torch.sqrt(gx * gx + gy * gy)


def sobel(x: torch.Tensor) -> torch.Tensor:
    """The Sobel view of x (B, 3, H, W): ``sobel_magnitude`` divided by its largest value in each image (so
    that it spans [0, 1]; an image without edges gives 0), the same in all three channels."""
    mag = sobel_magnitude(x)
    peak = mag.amax((2, 3), keepdim=True)
    edges = torch.where(peak > 0, mag / peak.clamp_min(1e-12), torch.zeros_like(mag))
    return edges.expand_as(x)


class SimCLRAugment:
    """Batched SimCLR augmentation: ``aug(x, generator) -> views``.

    Args:
        image_size: output side S.
        cfg: a ``simclr.config.AugmentConfig`` (default: the paper's chain); its auto keys are
            resolved for ``image_size`` (colour strength 0.5 and no blur at 32px or less).
        **keys: any AugmentConfig key to change, e.g. ``color_strength=0.5, blur=False``.

    Invalid values raise ``simclr.config.ConfigError`` naming the key. Calling it with x of shape
    (B, 3, H, W), uint8 or float in [0, 1], on any device, returns a float32 tensor (B, 3, S, S)
    in [0, 1] on the same device. Pass ``generator`` (a torch.Generator on x's device) for
    reproducible draws; every parameter is drawn independently for every image (except the blur's
    sigma under the official convention: one per call, as the official code draws one per batch).
    With ``precropped=True`` x is already a batch of (B, 3, S, S) crops (from ``ViewCropper``):
    the crop is skipped, the rest (flip onwards) is applied.

    ``aug(x, g)`` is the full chain (``simclr``: crop, colour, blur) whatever the view lists say;
    ``aug(x, g, view=1)`` follows ``augment.view1`` and ``view=2`` ``augment.view2``, as ``views`` does.
    """

    def __init__(self, image_size: int, cfg: AugmentConfig | None = None, **keys):
        try:
            cfg = dataclasses.replace(cfg or AugmentConfig(), **keys)
        except TypeError as e:
            raise ConfigError(f"unknown augmentation key: {e}") from None
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
        cfg = resolve_augment(cfg, image_size)
        check_section(cfg, "augment")
        self.image_size = image_size
        self.cfg = cfg
        # Switched-off operations have probability 0, so one code path serves every setting.
        self.crop = cfg.crop
        self.official = cfg.convention == "official"
        self.flip_p = cfg.flip_p if cfg.flip else 0.0
        self.color_strength = cfg.color_strength if cfg.color else 0.0
        self.color_p = cfg.color_p if cfg.color else 0.0
        self.gray_p = cfg.gray_p if cfg.grayscale else 0.0
        self.blur_p = cfg.blur_p if cfg.blur else 0.0
        self.blur_sigma, self.blur_kernel_frac = tuple(cfg.blur_sigma), cfg.blur_kernel_frac
        self.cutout_p, self.cutout_side = cfg.cutout_p, max(1, round(cfg.cutout_frac * image_size))
        self.sobel_p, self.noise_p, self.noise_std, self.rotate_p = cfg.sobel_p, cfg.noise_p, cfg.noise_std, cfg.rotate_p
        # The transformations of each view, in order: None is the full chain (what ``aug(x)`` does).
        self.transforms = {None: AugmentConfig.SIMCLR_VIEW, 1: AugmentConfig.expand_view(cfg.view1),
                           2: AugmentConfig.expand_view(cfg.view2)}
        self._ops = {
            "crop": (self._draw_crop_flip, self._crop_flip),
            "flip": (self._draw_flip, self._flip),
            "color": (self._draw_color_drop, self._color_drop),
            "jitter": (lambda b, h, w, dev, g, pre: self._draw_color(b, dev, g), lambda x, d, pre: self._color(x, d)),
            "gray": (lambda b, h, w, dev, g, pre: self._draw_gray(b, dev, g), lambda x, d, pre: self._gray(x, d)),
            "blur": (lambda b, h, w, dev, g, pre: self._draw_blur(b, dev, g), lambda x, d, pre: self._blur(x, d)),
            "cutout": (self._draw_cutout, self._cutout),
            "sobel": (self._draw_sobel, self._sobel),
            "noise": (self._draw_noise, self._noise),
            "rotate": (self._draw_rotate, self._rotate),
        }

    @classmethod
    def from_config(cls, cfg: AugmentConfig, image_size: int) -> SimCLRAugment:
        return cls(image_size, cfg)

    def __repr__(self) -> str:
        return f"SimCLRAugment(image_size={self.image_size}, cfg={self.cfg})"

    def view_crops(self) -> tuple[bool, bool]:
        """Whether each view's list has a random crop: what a loader that cuts both views from the full frame
        (``ViewCropper``) should cut for it (a random box, or the whole frame when False)."""
        return "crop" in self.transforms[1], "crop" in self.transforms[2]

    def _view(self, view: int | None) -> int | None:
        """The key of a view's transformations, None for any list equal to the full chain (so that both views of the
        default setting run the same compiled graph)."""
        if view not in self.transforms:
            raise ValueError(f"view must be None, 1 or 2, got {view!r}")
        return None if self.transforms[view] == self.transforms[None] else view

    # -- geometry ---------------------------------------------------------------------------
    def _draw_crop_flip(self, b: int, h: int, w: int, device, g, precropped: bool) -> dict:
        if precropped:
            return {"flip": _bernoulli(b, self.flip_p, device, g)}
        return {"box": sample_boxes(b, h, w, self.cfg, g, device), "flip": _bernoulli(b, self.flip_p, device, g)}

    def _crop_flip(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        _, _, h, w = x.shape
        s = self.image_size
        if precropped:
            if (h, w) != (s, s):
                raise ValueError(f"precropped views must be {s}x{s}, got {h}x{w}")
            return torch.where(d["flip"].view(-1, 1, 1, 1), x.flip(3), x)
        flip = d["flip"]
        if not self.crop and (h, w) == (s, s):  # nothing to resample: an exact flip
            return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        x0, y0, cw, ch = d["box"].to(x.dtype).unbind(1)
        # One affine resampling does crop, resize and flip together: output coordinate u in
        # [-1, 1] maps to input centre + half-extent * u (align_corners=False convention).
        sx = cw / w * torch.where(flip, -1.0, 1.0)
        sy = ch / h
        tx = (2 * x0 + cw) / w - 1
        ty = (2 * y0 + ch) / h - 1
        zero = torch.zeros_like(sx)
        theta = torch.stack((torch.stack((sx, zero, tx), 1), torch.stack((zero, sy, ty), 1)), 1)
        return self._resample(x, theta)

    def _resample(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        grid = F.affine_grid(theta, (x.shape[0], 3, self.image_size, self.image_size), align_corners=False)
        out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
        return out.clamp_(0.0, 1.0)

    def _fit(self, x: torch.Tensor, precropped: bool) -> torch.Tensor:
        """The whole image at the output size, as the crop does with ``augment.crop`` off (the view of a list
        that does not start with a crop, before its first transformation)."""
        _, _, h, w = x.shape
        s = self.image_size
        if (h, w) == (s, s):
            return x
        if precropped:
            raise ValueError(f"precropped views must be {s}x{s}, got {h}x{w}")
        theta = x.new_zeros(x.shape[0], 2, 3)  # the identity map: the box is the whole image, unflipped
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        return self._resample(x, theta)

    def _draw_flip(self, b: int, h: int, w: int, dev, g, precropped: bool) -> dict:
        return {"flip": _bernoulli(b, self.flip_p, dev, g)} if self.flip_p != 0 else {}

    def _flip(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        if "flip" not in d:
            return x
        return torch.where(d["flip"].view(-1, 1, 1, 1), x.flip(3), x)

    # -- colour -----------------------------------------------------------------------------
    def _draw_color(self, b: int, dev, g) -> dict:
        s = float(self.color_strength)
        if s == 0 or self.color_p == 0:
            return {}
        on = _bernoulli(b, self.color_p, dev, g)
        strengths = (0.8 * s, 0.8 * s, 0.8 * s)
        f_b, f_c, f_s = (_uniform(b, max(0.0, 1 - m), 1 + m, dev, g) for m in strengths)
        hue = _uniform(b, -0.2 * s, 0.2 * s, dev, g)
        # An independent order of the four operations for every image.
        order = torch.rand(b, 4, device=dev, generator=g).argsort(1)
        return {"color_on": on, "f_b": f_b, "f_c": f_c, "f_s": f_s, "hue": hue, "order": order}

    def _color(self, x: torch.Tensor, d: dict) -> torch.Tensor:
        if "color_on" not in d:
            return x
        on, order, hue = d["color_on"], d["order"], d["hue"]
        f_b, f_c, f_s = (d[k].view(-1, 1, 1, 1) for k in ("f_b", "f_c", "f_s"))
        if _indexing_pays(x):
            return self._color_indexed(x, on, order, f_b, f_c, f_s, hue)
        return self._color_masked(x, on, order, f_b, f_c, f_s, hue)

    def _color_indexed(self, x, on, order, f_b, f_c, f_s, hue) -> torch.Tensor:
        """Each operation on the images that drew it at this slot (gathered by index): the least arithmetic."""
        for slot in range(4):
            for op in range(4):
                idx = torch.nonzero(on & (order[:, slot] == op)).squeeze(1)
                if idx.numel() == 0:
                    continue
                xi = x.index_select(0, idx)
                if op == 0:
                    xi = _brightness(xi, f_b[idx])
                elif op == 1:
                    xi = _contrast(xi, f_c[idx])
                elif op == 2 and not self.official:
                    xi = _blend_saturation(xi, f_s[idx])
                else:  # hue, and the official saturation: in HSV
                    hsv = rgb_to_hsv(xi)
                    hsv = _hsv_op(hsv, op, f_s[idx], hue[idx])
                    xi = hsv_to_rgb(hsv)
                x = x.index_copy(0, idx, xi.clamp_(0.0, 1.0))
        return x

    def _color_masked(self, x, on, order, f_b, f_c, f_s, hue) -> torch.Tensor:
        """Every operation of a slot on the whole batch, each image keeping the one it drew: no host
        synchronisation and one graph for torch.compile, at about three times the arithmetic of
        ``_color_indexed`` (bit-identical per image: the same formulas, elementwise or per image)."""
        hsv_ops = (2, 3) if self.official else (3,)
        for slot in range(4):
            op = torch.where(on, order[:, slot], -1).view(-1, 1, 1, 1)  # -1: colour distortion off for the image
            y = torch.where(op == 0, _brightness(x, f_b), x)
            y = torch.where(op == 1, _contrast(x, f_c), y)
            if not self.official:
                y = torch.where(op == 2, _blend_saturation(x, f_s), y)
            hsv = rgb_to_hsv(x)
            hsv = torch.where(op == 3, _hsv_op(hsv, 3, f_s, hue), _hsv_op(hsv, 2, f_s, hue) if self.official else hsv)
            in_hsv = (op == hsv_ops[0]) | (op == hsv_ops[-1])
            y = torch.where(in_hsv, hsv_to_rgb(hsv), y)
            x = torch.where(op >= 0, y.clamp(0.0, 1.0), x)
        return x

    def _draw_gray_blur(self, b: int, dev, g) -> dict:
        return {**self._draw_gray(b, dev, g), **self._draw_blur(b, dev, g)}

    def _blur_radius(self) -> int:
        return int(self.image_size * self.blur_kernel_frac) // 2

    def _gray(self, x: torch.Tensor, d: dict) -> torch.Tensor:
        if "gray_on" not in d:
            return x
        return torch.where(d["gray_on"].view(-1, 1, 1, 1), rgb_to_grayscale(x).expand_as(x), x)

    def _blur(self, x: torch.Tensor, d: dict) -> torch.Tensor:
        if "blur_on" not in d:
            return x
        on, sigma, radius = d["blur_on"], d["sigma"], self._blur_radius()
        if _indexing_pays(x):  # only the images that drew a blur
            idx = torch.nonzero(on).squeeze(1)
            if idx.numel() == 0:
                return x
            return x.index_copy(0, idx, self._convolve(x.index_select(0, idx), sigma[idx], radius))
        # Every image is blurred and those that drew no blur keep their pixels: no host synchronisation.
        return torch.where(on.view(-1, 1, 1, 1), self._convolve(x, sigma, radius), x)

    def _convolve(self, x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
        """Separable Gaussian blur of x (n, C, H, W), one sigma (n,) per image, kernel 2 * radius + 1."""
        n, c, h, w = x.shape
        taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-(taps**2) / (2 * sigma.view(-1, 1) ** 2))
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, K)
        xi = x.reshape(1, n * c, h, w)
        if self.official:  # 'SAME' convolution: zeros outside the image
            xi = F.pad(xi, (radius, radius, radius, radius))
        elif radius > min(h, w) - 1:  # reflect padding needs pad < side; fall back to replicate for tiny inputs
            xi = F.pad(xi, (radius, radius, radius, radius), mode="replicate")
        else:
            xi = F.pad(xi, (radius, radius, radius, radius), mode="reflect")
        xi = F.conv2d(xi, k.view(n * c, 1, 1, -1), groups=n * c)
        xi = F.conv2d(xi, k.view(n * c, 1, -1, 1), groups=n * c)
        return xi.view(n, c, h, w)

    # -- colour distortion (the paper's: jitter, then drop) ---------------------------------------------
    def _draw_gray(self, b: int, dev, g) -> dict:
        return {"gray_on": _bernoulli(b, self.gray_p, dev, g)} if self.gray_p != 0 else {}

    def _draw_blur(self, b: int, dev, g) -> dict:
        d = {}
        if self.blur_p != 0 and self._blur_radius() >= 1:
            d["blur_on"] = _bernoulli(b, self.blur_p, dev, g)
            # official: one sigma for the whole batch of views (batch_random_blur); torchvision: one per image
            d["sigma"] = _uniform(1 if self.official else b, self.blur_sigma[0], self.blur_sigma[1], dev, g).expand(b)
        return d

    def _draw_color_drop(self, b: int, h: int, w: int, dev, g, precropped: bool) -> dict:
        return {**self._draw_color(b, dev, g), **self._draw_gray(b, dev, g)}

    def _color_drop(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        return self._gray(self._color(x, d), d)

    # -- the paper's other transformations (Figure 4) ----------------------------------------------------
    def _draw_cutout(self, b: int, h: int, w: int, dev, g, precropped: bool) -> dict:
        if self.cutout_p == 0:
            return {}
        free = self.image_size - self.cutout_side + 1  # positions of the square's top-left corner, per axis
        return {"on": _bernoulli(b, self.cutout_p, dev, g),
                "top": torch.randint(0, free, (b,), device=dev, generator=g),
                "left": torch.randint(0, free, (b,), device=dev, generator=g)}

    def _cutout(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        """Zero (black: the network's input is [0, 1] as in the official code, where 0 is also what Cutout's
        zero-masking gives) one cutout_side-square per image that drew it, wholly inside the view."""
        if "on" not in d:
            return x
        c = self.cutout_side
        idx = torch.arange(x.shape[-1], device=x.device)
        rows = (idx >= d["top"].view(-1, 1)) & (idx < d["top"].view(-1, 1) + c)  # (B, S)
        cols = (idx >= d["left"].view(-1, 1)) & (idx < d["left"].view(-1, 1) + c)
        mask = rows.unsqueeze(2) & cols.unsqueeze(1) & d["on"].view(-1, 1, 1)
        return x.masked_fill(mask.unsqueeze(1), 0.0)

    def _draw_sobel(self, b: int, h: int, w: int, dev, g, precropped: bool) -> dict:
        return {"on": _bernoulli(b, self.sobel_p, dev, g)} if self.sobel_p != 0 else {}

    def _sobel(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        if "on" not in d:
            return x
        return torch.where(d["on"].view(-1, 1, 1, 1), sobel(x), x)

    def _draw_noise(self, b: int, h: int, w: int, dev, g, precropped: bool) -> dict:
        if self.noise_p == 0 or self.noise_std == 0:
            return {}
        s = self.image_size
        return {"on": _bernoulli(b, self.noise_p, dev, g),
                "noise": torch.randn(b, 3, s, s, device=dev, generator=g)}

    def _noise(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        if "on" not in d:
            return x
        noisy = (x + self.noise_std * d["noise"].to(x.dtype)).clamp(0.0, 1.0)
        return torch.where(d["on"].view(-1, 1, 1, 1), noisy, x)

    def _draw_rotate(self, b: int, h: int, w: int, dev, g, precropped: bool) -> dict:
        if self.rotate_p == 0:
            return {}
        on = _bernoulli(b, self.rotate_p, dev, g)
        k = torch.randint(1, 4, (b,), device=dev, generator=g)
        return {"k": torch.where(on, k, torch.zeros_like(k))}  # quarter turns: 0 (none), 1, 2 or 3

    def _rotate(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        """Each image turned by its k quarter turns counter-clockwise (torch.rot90 over H, W; views are square):
        every turn computed for the whole batch, each image keeping its own, so no indexing by k."""
        if "k" not in d:
            return x
        k = d["k"].view(-1, 1, 1, 1)
        for turns in (1, 2, 3):
            x = torch.where(k == turns, torch.rot90(x, turns, (2, 3)), x)
        return x

    # -- a view ------------------------------------------------------------------------------
    def views(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two training views (each (B, 3, S, S) float32 in [0, 1]) of a batch as the loader gives it:
        images x (B, 3, H, W), or their two crops (B, 2, 3, S, S) cut from the full frame by ``ViewCropper``.
        The first follows ``augment.view1``, the second ``augment.view2``."""
        v1, v2 = self._view(1), self._view(2)
        if x.dim() == 5:
            return (self(x[:, 0], generator, precropped=True, view=v1),
                    self(x[:, 1], generator, precropped=True, view=v2))
        return self(x, generator, view=v1), self(x, generator, view=v2)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, precropped: bool = False,
                 view: int | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        view = self._view(view)
        return self._apply(x, self.draw(b, h, w, x.device, generator, precropped, view), precropped, view)

    def draw(self, b: int, h: int, w: int, device, generator: torch.Generator | None = None,
             precropped: bool = False, view: int | None = None) -> dict[str, torch.Tensor]:
        """Every random parameter of one view of b images of h x w, in the order ``__call__`` draws them:
        a dict of (b, ...) tensors on ``device``, keyed 'transformation.parameter' (crop boxes and flips, colour
        factors and order, grayscale, blur and sigma, cutout squares, Sobel switches, noise, quarter turns;
        switched-off operations draw nothing). ``view``: as for ``__call__``."""
        d = {}
        s = self.image_size
        for i, name in enumerate(self.transforms[self._view(view)]):
            hw = (h, w) if i == 0 else (s, s)  # only a leading crop sees the input; the rest see S x S views
            for k, v in self._ops[name][0](b, *hw, device, generator, precropped).items():
                d[f"{name}.{k}"] = v
        return d

    def apply(self, x: torch.Tensor, draws: dict[str, torch.Tensor], precropped: bool = False,
              view: int | None = None) -> torch.Tensor:
        """The view of x (B, 3, H, W) given ``draws`` from ``draw``: (B, 3, S, S) float32 in [0, 1]. A pure
        function of its inputs, with no host synchronisation on the masked path: it compiles as one graph."""
        names = self.transforms[self._view(view)]
        x = to_float(x)
        if not names or names[0] != "crop":
            x = self._fit(x, precropped)
        for name in names:
            prefix = name + "."
            d = {k[len(prefix):]: v for k, v in draws.items() if k.startswith(prefix)}
            x = self._ops[name][1](x, d, precropped)
        return x.clamp(0.0, 1.0)

    _apply = apply

    def compile(self, **kwargs) -> SimCLRAugment:
        """Run ``apply`` through ``torch.compile(fullgraph=True)`` from now on (the draws stay eager: the
        generator is outside the graph). Outputs equal the eager ones to float rounding. Returns self."""
        self._apply = torch.compile(self.apply, fullgraph=True, **kwargs)
        return self
