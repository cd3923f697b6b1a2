"""Image folders: classes, flat folders, max_per_class, header checks, in-memory vs streamed."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from bad_images import cut_after_header, make, write_jpeg
from conftest import write_folder
from simclr.config import DataConfig
from simclr.data import BadImageError, DataError, list_images, load_dataset, load_folder


def test_class_folder(tmp_path):
    write_folder(tmp_path, per_class=3, classes=("cat", "ant"))
    paths, labels, classes = list_images(tmp_path)
    assert classes == ["ant", "cat"]
    assert labels == [0, 0, 0, 1, 1, 1]
    assert Path(paths[0]).parent.name == "ant"


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.jpg")
    ds = load_folder(tmp_path)
    assert len(ds) == 4 and not ds.has_labels and ds.images.shape == (4, 3, 8, 8)


def test_max_per_class(tmp_path):
    write_folder(tmp_path, per_class=5)
    assert len(load_folder(tmp_path, DataConfig(max_per_class=2))) == 4
    assert len(load_dataset(str(tmp_path), DataConfig(max_per_class=3))) == 6


def test_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(DataError, match="no data given"):
        load_dataset("")


def test_image_size_auto_and_explicit(tmp_path):
    write_folder(tmp_path, per_class=2, size=(12, 12))
    assert load_folder(tmp_path).images.shape[-1] == 12  # auto: native side in memory
    assert load_folder(tmp_path, DataConfig(image_size=20)).images.shape[-1] == 20


def test_large_images_stream(tmp_path):
    write_folder(tmp_path, per_class=2, size=(150, 120))
    ds = load_folder(tmp_path, DataConfig(image_size=64))
    assert ds.images is None and ds.streamed and ds.load_size == 74
    x = ds.get(torch.tensor([0, 3]))
    assert x.shape == (2, 3, 74, 74) and x.dtype == torch.uint8
    assert load_folder(tmp_path).load_size == 256  # auto: 224 for large images
    assert load_folder(tmp_path, DataConfig(in_memory_max_side=200)).images.shape == (4, 3, 150, 150)


def test_pixel_limit(tmp_path):
    (tmp_path / "c").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "c" / "big.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "small.png")
    ds = load_folder(tmp_path, DataConfig(max_pixels=1000))
    assert len(ds) == 1 and "exceeds the limit of 1000" in ds.bad[0][1]


def test_bad_files_skipped_or_strict(tmp_path):
    unreadable = make(tmp_path, n_good=20)
    ds = load_folder(tmp_path)
    assert [p for p, _ in ds.bad] == unreadable and len(ds) == 20 + 6
    assert not set(unreadable) & set(ds.paths)
    with pytest.raises(BadImageError, match="bomb.png") as e:
        load_folder(tmp_path, DataConfig(strict=True))
    assert "\n" not in str(e.value)


def test_streamed_header_ok_is_indexed_and_get_names_the_file(tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(3):
        write_jpeg(tmp_path / "c" / f"{i}.jpg", seed=i)
    cut = cut_after_header(write_jpeg(tmp_path / "c" / "cut.jpg"))
    ds = load_folder(tmp_path, DataConfig(image_size=32))
    assert ds.streamed and str(cut) in ds.paths and not ds.bad  # the header check cannot tell
    with pytest.raises(BadImageError, match="unreadable image .*cut.jpg: cannot decode") as e:
        ds.get(torch.arange(4))
    assert "\n" not in str(e.value)
    assert ds.get(torch.arange(3)).shape == (3, 3, 37, 37)


def test_non_utf8_names(tmp_path):
    small = tmp_path / "small" / os.fsdecode(b"cl\xe4ss")
    small.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(small / os.fsdecode(b"im\xff%d.png" % i))
    (small / os.fsdecode(b"bad\xff.png")).write_bytes(b"")
    ds = load_folder(tmp_path / "small")
    assert len(ds) == 3 and ds.classes == [os.fsdecode(b"cl\xe4ss")] and len(ds.bad) == 1
    with pytest.raises(BadImageError) as e:
        load_folder(tmp_path / "small", DataConfig(strict=True))
    assert "bad\\xff.png" in str(e.value)
    str(e.value).encode("utf-8")
    with pytest.raises(DataError) as e:
        list_images(tmp_path / os.fsdecode(b"no\xff"))
    str(e.value).encode("utf-8")

    large = tmp_path / "large"
    large.mkdir()
    for i in range(2):
        write_jpeg(large / os.fsdecode(b"\xe9%d.jpg" % i), seed=i)
    ds = load_folder(large, DataConfig(image_size=32))
    assert ds.streamed and ds.get(torch.arange(2)).shape == (2, 3, 37, 37)


def test_cifar_folder_from_shared(cifar_jpeg):
    ds = load_folder(cifar_jpeg / "test", DataConfig(max_per_class=3))
    assert ds.images.shape == (30, 3, 32, 32) and ds.classes[0] == "airplane"
