"""The built-in synthetic set: ten shape classes in random colours, generated from a seed.

Needs no files or network, so it serves as a smoke test and a demo: a random network scores near
chance with kNN on it, contrastive training recovers the shapes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from simclr.data.imageset import ImageSet

__all__ = ["SYNTHETIC_CLASSES", "synthetic_images"]

SYNTHETIC_CLASSES = ["disc", "square", "triangle", "plus", "ring", "diamond", "hbars", "vbars", "checker", "two-discs"]


def synthetic_images(n: int, seed: int, size: int = 32) -> ImageSet:
    """A procedurally generated labelled set: 10 shape classes (the label) in random colours.

    Each image is one large shape near the centre, with random foreground and background colours
    (independent of the label), size, aspect, rotation, offset and pixel noise. A random network
    sees mostly colour and scores near chance with kNN; contrastive training, which learns to
    ignore colour changes and crops, recovers the shapes. Deterministic for a seed; images are
    uint8 (n, 3, size, size).
    """
    rng = np.random.default_rng(seed)
    ss = 2  # supersampling for anti-aliased edges
    s = size * ss
    yy, xx = np.meshgrid(np.linspace(-1, 1, s), np.linspace(-1, 1, s), indexing="ij")
    labels = rng.integers(0, len(SYNTHETIC_CLASSES), n)
    out = np.empty((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        c = labels[i]
        r = rng.uniform(0.55, 0.8)
        stretch = rng.uniform(0.85, 1.15)
        cx, cy = rng.uniform(-0.15, 0.15, 2)
        ang = rng.uniform(-0.3, 0.3)
        x = ((xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)) / (r * stretch)
        y = (-(xx - cx) * math.sin(ang) + (yy - cy) * math.cos(ang)) * stretch / r
        rad = np.sqrt(x**2 + y**2)
        if c == 0:
            m = rad < 1
        elif c == 1:
            m = (np.abs(x) < 0.85) & (np.abs(y) < 0.85)
        elif c == 2:
            m = (y < 0.8) & (y > 1.9 * np.abs(x) - 0.9)
        elif c == 3:
            m = ((np.abs(x) < 0.3) & (np.abs(y) < 1)) | ((np.abs(y) < 0.3) & (np.abs(x) < 1))
        elif c == 4:
            m = (rad < 1) & (rad > 0.55)
        elif c == 5:
            m = np.abs(x) + np.abs(y) < 1.1
        elif c == 6:
            m = (np.abs(x) < 1) & (np.abs(y) < 1) & (np.floor((y + 1) * 2.5) % 2 == 0)
        elif c == 7:
            m = (np.abs(x) < 1) & (np.abs(y) < 1) & (np.floor((x + 1) * 2.5) % 2 == 0)
        elif c == 8:
            m = (np.abs(x) < 1) & (np.abs(y) < 1) & ((np.floor((x + 1) * 2) + np.floor((y + 1) * 2)) % 2 == 0)
        else:
            m = (np.sqrt((x - 0.5) ** 2 + y**2) < 0.42) | (np.sqrt((x + 0.5) ** 2 + y**2) < 0.42)
        fg = rng.uniform(0, 1, 3)
        bg = rng.uniform(0, 1, 3)
        while np.abs(fg - bg).sum() < 0.6:  # keep the shape visible
            bg = rng.uniform(0, 1, 3)
        noise = rng.normal(0, 0.05, (s, s, 1))
        img = np.where(m[..., None], fg, bg) + noise
        img = img.reshape(size, ss, size, ss, 3).mean((1, 3))
        out[i] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1)
    return ImageSet(labels=torch.from_numpy(labels.astype(np.int64)), classes=list(SYNTHETIC_CLASSES), images=torch.from_numpy(out))
