"""Decoding one file: every mode to RGB, EXIF orientation, 16-bit scaling, reasons for bad files."""

import inspect
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_images import cut_after_header, make, write_jpeg
from simclr.config import DataConfig
from simclr.data import BadImageError, check_image, decode_image, load_folder
from simclr.data.decode import load_fixed, load_size_for
from simclr.data.errors import printable


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    (tmp_path / "c").mkdir()
    img = Image.new("RGB", (10, 10), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16))
    else:
        img = img.convert(mode)
    img.save(tmp_path / "c" / ("x.tif" if mode in ("CMYK", "I;16") else "x.png"))
    ds = load_folder(tmp_path)
    assert ds.images.shape == (1, 3, 10, 10) and ds.images.dtype == torch.uint8


def test_exif_orientation_applied(tmp_path):
    (tmp_path / "c").mkdir()
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    img.save(tmp_path / "c" / "r.jpg", exif=exif)
    ds = load_folder(tmp_path)
    assert ds.images.shape == (1, 3, 20, 20)  # shorter side fitted to the longest probed side, centre-cropped
    assert decode_image(tmp_path / "c" / "r.jpg").size == (10, 20)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((6, 6), 32768, dtype=np.uint16)).save(tmp_path / "c" / "g.png")
    ds = load_folder(tmp_path)
    assert abs(int(ds.images[0, 0, 0, 0]) - 128) <= 1


def test_transparency_over_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert decode_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_bad_files_give_a_reason(tmp_path):
    unreadable = make(tmp_path, n_good=2)
    reasons = {}
    for p in unreadable:
        with pytest.raises(BadImageError) as e:
            decode_image(p)
        reasons[Path(p).name] = str(e.value)
    assert reasons["zero.jpg"] == "empty file"
    assert reasons["bomb.png"].startswith("refused")
    assert reasons["notanimage.png"].startswith("not a readable image")
    assert reasons["truncated.jpg"]  # header or data, depending on where the cut falls
    with pytest.raises(BadImageError, match="file not found"):
        check_image(tmp_path / "gone.jpg")
    assert all("\n" not in r for r in reasons.values())


def test_header_passes_but_decode_fails(tmp_path):
    p = cut_after_header(write_jpeg(tmp_path / "cut.jpg"))
    assert check_image(p) == (150, 120)
    with pytest.raises(BadImageError, match="cannot decode"):
        load_fixed(p, 32)


def test_default_pixel_limit_is_the_config_one(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    assert check_image(tmp_path / "big.png") == (40, 40)
    for fn in (check_image, decode_image, load_fixed):
        assert inspect.signature(fn).parameters["max_pixels"].default == DataConfig.max_pixels
    with pytest.raises(BadImageError, match="limit of 1000"):
        check_image(tmp_path / "big.png", max_pixels=1000)


def test_load_fixed_and_load_size(tmp_path):
    x = load_fixed(write_jpeg(tmp_path / "a.jpg", (150, 120)), 37)
    assert x.shape == (3, 37, 37) and x.dtype == torch.uint8
    assert load_size_for(224) == 256 and load_size_for(32) == 37


def test_non_utf8_file_name(tmp_path):
    name = os.fsdecode(b"caf\xe9-\xff.jpg")
    good = write_jpeg(tmp_path / name, (20, 10))
    assert decode_image(good).size == (20, 10)
    bad = tmp_path / os.fsdecode(b"\xfe.png")
    bad.write_bytes(b"not an image")
    with pytest.raises(BadImageError) as e:
        decode_image(bad)
    str(e.value).encode("utf-8")  # printable: no UnicodeEncodeError
    assert printable(str(good)).endswith("caf\\xe9-\\xff.jpg")
