"""The batched augmentation as it was before the per-view lists and Figure 4's transformations (issue 12): a
frozen copy of ``simclr.data.augment.SimCLRAugment`` at that point, kept only as the reference that today's
default chain (``augment.view1`` / ``view2`` = simclr) must equal bit for bit (tests/data/test_augment.py).
Never edit it to follow the package: a difference is what the test is there to catch."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from simclr.config import AugmentConfig, ConfigError, check_section, resolve_augment
from simclr.data.crop import center_box, sample_boxes

__all__ = ["SimCLRAugment"]

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

    @classmethod
    def from_config(cls, cfg: AugmentConfig, image_size: int) -> SimCLRAugment:
        return cls(image_size, cfg)

    def __repr__(self) -> str:
        return f"SimCLRAugment(image_size={self.image_size}, cfg={self.cfg})"

    # -- geometry ---------------------------------------------------------------------------
    def _draw_crop_flip(self, b: int, h: int, w: int, device, g, precropped: bool) -> dict:
        if precropped:
            return {"flip": _bernoulli(b, self.flip_p, device, g)}
        return {"box": sample_boxes(b, h, w, self.cfg, g, device), "flip": _bernoulli(b, self.flip_p, device, g)}

    def _crop_flip(self, x: torch.Tensor, d: dict, precropped: bool) -> torch.Tensor:
        b, _, h, w = x.shape
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
        grid = F.affine_grid(theta, (b, 3, s, s), align_corners=False)
        out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
        return out.clamp_(0.0, 1.0)

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
        d = {}
        if self.gray_p != 0:
            d["gray_on"] = _bernoulli(b, self.gray_p, dev, g)
        if self.blur_p != 0 and self._blur_radius() >= 1:
            d["blur_on"] = _bernoulli(b, self.blur_p, dev, g)
            # official: one sigma for the whole batch of views (batch_random_blur); torchvision: one per image
            d["sigma"] = _uniform(1 if self.official else b, self.blur_sigma[0], self.blur_sigma[1], dev, g).expand(b)
        return d

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

    def views(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two training views (each (B, 3, S, S) float32 in [0, 1]) of a batch as the loader gives it:
        images x (B, 3, H, W), or their two crops (B, 2, 3, S, S) cut from the full frame by ``ViewCropper``."""
        if x.dim() == 5:
            return self(x[:, 0], generator, precropped=True), self(x[:, 1], generator, precropped=True)
        return self(x, generator), self(x, generator)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, precropped: bool = False) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        return self._apply(x, self.draw(b, h, w, x.device, generator, precropped), precropped)

    def draw(self, b: int, h: int, w: int, device, generator: torch.Generator | None = None,
             precropped: bool = False) -> dict[str, torch.Tensor]:
        """Every random parameter of one view of b images of h x w, in the order ``__call__`` draws them:
        a dict of (b, ...) tensors on ``device`` (crop boxes, flips, colour factors and order, grayscale,
        blur and sigma; switched-off operations draw nothing)."""
        d = self._draw_crop_flip(b, h, w, device, generator, precropped)
        d.update(self._draw_color(b, device, generator))
        d.update(self._draw_gray_blur(b, device, generator))
        return d

    def apply(self, x: torch.Tensor, draws: dict[str, torch.Tensor], precropped: bool = False) -> torch.Tensor:
        """The view of x (B, 3, H, W) given ``draws`` from ``draw``: (B, 3, S, S) float32 in [0, 1]. A pure
        function of its inputs, with no host synchronisation on the masked path: it compiles as one graph."""
        x = to_float(x)
        x = self._crop_flip(x, draws, precropped)
        x = self._color(x, draws)
        x = self._gray(x, draws)
        x = self._blur(x, draws)
        return x.clamp_(0.0, 1.0)

    _apply = apply

    def compile(self, **kwargs) -> SimCLRAugment:
        """Run ``apply`` through ``torch.compile(fullgraph=True)`` from now on (the draws stay eager: the
        generator is outside the graph). Outputs equal the eager ones to float rounding. Returns self."""
        self._apply = torch.compile(self.apply, fullgraph=True, **kwargs)
        return self
