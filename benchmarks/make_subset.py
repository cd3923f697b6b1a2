"""Make a class-balanced subset of an image folder as symbolic links (no copies, source untouched).

    python benchmarks/make_subset.py SRC DST --per-class N

The first N files (sorted by name) of each class subfolder are linked into DST/<class>/.
Used for the CIFAR-10 figures in docs/benchmarks.md: 1,000 train and 200 test images per class.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from simclr.data import IMAGE_EXTENSIONS


def make_subset(src: Path, dst: Path, per_class: int) -> int:
    n = 0
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)[:per_class]
        (dst / cls.name).mkdir(parents=True, exist_ok=True)
        for f in files:
            link = dst / cls.name / f.name
            if not link.exists():
                os.symlink(f.resolve(), link)
            n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--per-class", type=int, required=True)
    a = ap.parse_args()
    print(f"linked {make_subset(a.src, a.dst, a.per_class)} images into {a.dst}")


if __name__ == "__main__":
    main()
