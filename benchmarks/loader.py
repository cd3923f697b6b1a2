"""Loader-side cost of one source image, per CPU core: crops from the full frame against torchvision's way.

    python benchmarks/loader.py --data DIR [--image-size 224] [--images N] [--repeat 3]
        [--sizes 500x375,...] [--seed 0] [--clock wall|cpu] [--json-only]

One process, ``torch.set_num_threads(1)``: the figures are what one DataLoader worker (one core) delivers.
Every pipeline reads its file from disk each time (the page cache holds the folder after the warm-up) and
returns uint8 tensors, as a loader worker hands them to the batch collation. Three pipelines over the JPEG
files of DIR (recursively, sorted; ``--sizes`` keeps only files whose stored width x height is listed):

``new``
    The project's loader path for large images: ``simclr.data.crop.ViewCropper(S, AugmentConfig(),
    max_pixels)(path, generator)`` -> uint8 (2, 3, S, S): both training views' boxes drawn over the full
    frame (default sampler, ``official``), ONE decode per image (libjpeg-turbo through simplejpeg, straight
    into numpy), at a reduced DCT scale (M/8) when every crop still keeps S pixels a side, then each crop
    resized to S x S with torch's uint8 antialiased bicubic kernel (Pillow's bicubic when the decode was
    scaled). A fresh generator per image seeded as the training loader seeds it:
    ``image_seed(seed, epoch, index)`` with the pass number as the epoch.

``baseline``
    What torchvision's ``ImageFolder`` loader + ``RandomResizedCrop(S, interpolation=BICUBIC)`` +
    ``PILToTensor()`` do on PIL images, applied twice (two views, as a SimCLR two-crop transform does),
    written out here without torchvision: ``Image.open(path).convert("RGB")`` (full decode), then per view
    an independent box from RandomResizedCrop's ``get_params`` (area uniform in [0.08, 1] of the image,
    aspect log-uniform in [3/4, 4/3], 10 attempts with torch's global RNG, fallback to the clamped centre
    crop), ``img.resize((S, S), Image.BICUBIC, box=...)`` (Pillow's antialiased bicubic; the same pixels
    as torchvision's ``crop`` then ``resize``, without copying the crop first), and
    ``torch.as_tensor(np.array(img, copy=True)).permute(2, 0, 1)`` as PILToTensor -> two uint8 (3, S, S).
    Both resizes are antialiased bicubic (a = -0.5), so the comparison is at equal resampling quality.

``center``
    The previous release's path for streamed images: ``simclr.data.decode.load_fixed(path,
    load_size_for(S), max_pixels)`` -> uint8 (3, L, L), L = ceil(8/7 S): full decode, shorter side resized
    to L, centre square; the training device then cut both views from that square (not timed here).

Each pipeline is warmed up on the first images, then timed over ``--repeat`` passes of N images; the
passes of the three pipelines alternate, so machine noise hits all alike, and the median images/s of
each is reported (the best pass too, in the JSON: on a shared machine it is the least disturbed).
``--clock cpu`` divides by this process's CPU time instead of wall time (one thread, so the same on an
idle machine; other jobs on the cores then lengthen it far less); the JSON holds both. An untimed
extra pass of ``new`` records which JPEG scale each decode used. The device-side part of the
augmentation (flip, colour, grayscale, blur) is not included in any pipeline.

Output: a readable table, and as the last line one JSON object:
``{"images_per_sec": {"new", "baseline", "center"}, "ratio": new/baseline, "image_size", "images",
"threads": 1, "cpu", "torch", "pillow", ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image

from simclr.runtime import cpu_model
from simclr.config import AugmentConfig, DataConfig
from simclr.data.batches import image_seed
from simclr.data.crop import ViewCropper
from simclr.data.decode import load_fixed, load_size_for

PIPELINES = ("new", "baseline", "center")
_SUFFIXES = {".jpg", ".jpeg"}


def list_jpegs(root: Path, sizes: set[tuple[int, int]] | None, limit: int | None) -> list[str]:
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())
    if sizes:
        kept = []
        for f in files:
            with Image.open(f) as im:  # header only
                if im.size in sizes:
                    kept.append(f)
        files = kept
    return files[:limit] if limit else files


# --- baseline: torchvision's RandomResizedCrop + PILToTensor on PIL images, without torchvision ---------------

def rrc_params(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision.transforms.RandomResizedCrop.get_params: (top, left, h, w), same RNG calls."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,)).item()
            j = torch.randint(0, width - w + 1, size=(1,)).item()
            return i, j, h, w
    in_ratio = float(width) / float(height)  # fallback: centre crop clamped to the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision.transforms.functional.pil_to_tensor for an RGB image: uint8 (3, H, W), a permuted view."""
    return torch.as_tensor(np.array(img, copy=True)).view(img.size[1], img.size[0], 3).permute(2, 0, 1)


def baseline_views(path: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:  # torchvision's pil_loader
        img = Image.open(f).convert("RGB")
    out = []
    for _ in range(2):
        i, j, h, w = rrc_params(*img.size)
        out.append(pil_to_tensor(img.resize((size, size), Image.BICUBIC, box=(j, i, j + w, i + h))))
    return out[0], out[1]


# --- timing ------------------------------------------------------------------------------------------------

def make_runners(size: int, max_pixels: int, seed: int):
    cropper = ViewCropper(size, AugmentConfig(), max_pixels)
    load = load_size_for(size)

    def new(files, epoch):
        for i, p in enumerate(files):
            cropper(p, torch.Generator().manual_seed(image_seed(seed, epoch, i)))

    def baseline(files, epoch):
        torch.manual_seed(image_seed(seed, epoch, 0))
        for p in files:
            baseline_views(p, size)

    def center(files, epoch):
        for p in files:
            load_fixed(p, load, max_pixels)

    return {"new": new, "baseline": baseline, "center": center}, cropper


def decode_scales(cropper: ViewCropper, files: list[str], seed: int, epoch: int) -> list[float]:
    """The JPEG scale (1, or the DCT scale M/8 of a reduced decode) of each image's decode in ``new``
    (an untimed pass that watches ``ViewCropper._cut``, which receives the scale)."""
    seen: list[float] = []
    orig = ViewCropper._cut

    def spy(self, frame, boxes, f, shift):
        seen.append(f)
        return orig(self, frame, boxes, f, shift)

    ViewCropper._cut = spy
    try:
        for i, p in enumerate(files):
            cropper(p, torch.Generator().manual_seed(image_seed(seed, epoch, i)))
    finally:
        ViewCropper._cut = orig
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder of JPEG files (searched recursively)")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--images", type=int, default=None, help="first N files (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="timed passes per pipeline (median reported)")
    ap.add_argument("--warmup", type=int, default=16, help="images per pipeline in the untimed warm-up")
    ap.add_argument("--sizes", default=None, help="keep only files of these stored sizes, e.g. 500x375,1024x768")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-pixels", type=int, default=DataConfig.max_pixels)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what images/s divides by: wall time, or this process's CPU time (steadier on a shared machine)")
    ap.add_argument("--json-only", action="store_true", help="print only the JSON line")
    a = ap.parse_args(argv)

    torch.set_num_threads(1)
    sizes = None
    if a.sizes:
        sizes = {tuple(int(v) for v in s.lower().split("x")) for s in a.sizes.split(",") if s.strip()}
    files = list_jpegs(Path(a.data), sizes, a.images)
    if not files:
        print(f"no JPEG files in {a.data}" + (f" of sizes {a.sizes}" if a.sizes else ""), file=sys.stderr)
        return 2
    S = a.image_size
    runners, cropper = make_runners(S, a.max_pixels, a.seed)

    warm = files[: max(1, a.warmup)]
    for name in PIPELINES:
        runners[name](warm, 10_000)
    wall: dict[str, list[float]] = {k: [] for k in PIPELINES}
    cpu: dict[str, list[float]] = {k: [] for k in PIPELINES}
    for r in range(a.repeat):
        for name in PIPELINES:
            t0, c0 = time.perf_counter(), time.process_time()
            runners[name](files, r)
            c1, t1 = time.process_time(), time.perf_counter()
            wall[name].append(len(files) / (t1 - t0))
            cpu[name].append(len(files) / (c1 - c0))
    rates, other = (cpu, wall) if a.clock == "cpu" else (wall, cpu)
    med = {k: statistics.median(v) for k, v in rates.items()}
    scales = decode_scales(cropper, files, a.seed, 0)
    hist = {f"{s:g}": scales.count(s) for s in sorted(set(scales), reverse=True)}
    dims = {}
    for f in files:
        with Image.open(f) as im:
            key = "x".join(map(str, im.size))
            dims[key] = dims.get(key, 0) + 1

    res = {
        "images_per_sec": {k: round(v, 2) for k, v in med.items()},
        "ratio": round(med["new"] / med["baseline"], 4),
        "image_size": S,
        "images": len(files),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "pillow": PIL.__version__,
        "repeat": a.repeat,
        "clock": a.clock,
        "best_images_per_sec": {k: round(max(v), 2) for k, v in rates.items()},
        "all_passes": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        ("wall" if a.clock == "cpu" else "cpu") + "_clock": {
            "images_per_sec": {k: round(statistics.median(v), 2) for k, v in other.items()},
            "ratio": round(statistics.median(other["new"]) / statistics.median(other["baseline"]), 4)},
        "new_decode_scale": {"images_by_scale": hist, "reduced_fraction": round(sum(s < 1 for s in scales) / len(scales), 4),
                             "mean_scale": round(statistics.fmean(scales), 4)},
        "sizes": dict(sorted(dims.items(), key=lambda kv: -kv[1])),
    }

    if not a.json_only:
        print(f"{len(files)} JPEGs from {a.data} ({', '.join(f'{k}: {v}' for k, v in res['sizes'].items())}), "
              f"S={S}, 1 thread, {a.clock} clock, {res['cpu']}, torch {res['torch']}, Pillow {res['pillow']}")
        print(f"{'pipeline':<10} {'images/s':>10} {'ms/image':>9}  passes (images/s)  output per image")
        outs = {"new": f"uint8 (2, 3, {S}, {S})", "baseline": f"2 x uint8 (3, {S}, {S})",
                "center": f"uint8 (3, {load_size_for(S)}, {load_size_for(S)})"}
        for k in PIPELINES:
            print(f"{k:<10} {med[k]:>10.1f} {1e3 / med[k]:>9.3f}  {' '.join(f'{x:.1f}' for x in rates[k]):<17}  {outs[k]}")
        print(f"ratio new/baseline: {res['ratio']:.3f}; new decoded images at scales {hist} "
              f"(reduced: {res['new_decode_scale']['reduced_fraction']:.0%})")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
