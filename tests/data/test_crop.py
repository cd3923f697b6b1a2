"""Crop geometry against independent references: a line-by-line Python transcription of TensorFlow's
sample_distorted_bounding_box (core/kernels/image/sample_distorted_bounding_box_op.cc) as the official
code calls it, the official evaluation crop (tf2/data_util.py ``_compute_crop_shape``/``center_crop``),
and a full decode for the loader's reduced-scale decode."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import ks_2samp

from simclr.config import AugmentConfig
from simclr.data.crop import ViewCropper, center_box, official_boxes, sample_boxes, torchvision_boxes
from simclr.data.decode import decode_image, to_tensor
from simclr.data.errors import BadImageError

PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "photos"


def _lrint(v: float) -> int:
    return int(round(v))  # Python's round is half-to-even, as lrintf in the default rounding mode


def _tf_generate_random_crop(W, H, min_area, max_area, ar, rng):
    height = _lrint(math.sqrt(min_area / ar))
    max_height = _lrint(math.sqrt(max_area / ar))
    if _lrint(max_height * ar) > W:
        max_height = int((W + 0.5 - 0.0000001) / ar)
        if _lrint(max_height * ar) > W:
            max_height -= 1
    if max_height > H:
        max_height = H
    if height >= max_height:
        height = max_height
    if height < max_height:
        height += rng.randrange(max_height - height + 1)
    width = _lrint(height * ar)
    area = width * height
    if area < min_area:
        height += 1
        width = _lrint(height * ar)
        area = width * height
    if area > max_area:
        height -= 1
        width = _lrint(height * ar)
        area = width * height
    if area < min_area or area > max_area or width > W or height > H or width <= 0 or height <= 0:
        return None
    y = rng.randrange(H - height) if height < H else 0
    x = rng.randrange(W - width) if width < W else 0
    return x, y, width, height


def tf_sample_distorted_bounding_box(H, W, rng, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3), min_covered=0.1, attempts=100):
    """One box (x, y, w, h) as TF draws it for the whole-image object box [0, 0, 1, 1]."""
    min_area, max_area = area[0] * W * H, area[1] * W * H
    for _ in range(attempts):
        ar = rng.random() * (aspect[1] - aspect[0]) + aspect[0]
        box = _tf_generate_random_crop(W, H, min_area, max_area, ar, rng)
        if box is None:
            continue
        _, _, w, h = box
        if w * h < 10:  # kMinArea
            continue
        if w * h / (W * H) >= min_covered:  # coverage of the whole-image object box
            return box
    return 0, 0, W, H


@pytest.mark.parametrize("H,W", [(224, 224), (375, 500), (500, 333), (32, 32)])
def test_official_sampler_matches_tf_in_distribution(H, W):
    n = 20_000
    rng = random.Random(1)
    ref = np.array([tf_sample_distorted_bounding_box(H, W, rng) for _ in range(n)], dtype=np.float64)
    ours = official_boxes(n, H, W, torch.Generator().manual_seed(2)).numpy()
    for boxes in (ref, ours):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= W).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= H).all()
    area = lambda b: b[:, 2] * b[:, 3] / (H * W)  # noqa: E731
    aspect = lambda b: b[:, 2] / b[:, 3]  # noqa: E731
    assert ks_2samp(area(ref), area(ours)).statistic < 0.02
    assert ks_2samp(aspect(ref), aspect(ours)).statistic < 0.02
    # positions too: the offset never lets a partial crop touch the far edge
    assert ks_2samp(ref[:, 0] / W, ours[:, 0] / W).statistic < 0.02
    assert area(ours).min() >= 0.1 - 1e-9  # min_object_covered
    if (H, W) == (224, 224):
        assert abs(area(ours).mean() - 0.42) < 0.01  # the figure for the official sampler


def test_official_and_torchvision_samplers_differ_as_documented():
    g = torch.Generator().manual_seed(0)
    off = official_boxes(20_000, 224, 224, g)
    tv = torchvision_boxes(20_000, 224, 224, g)
    a_off, a_tv = off[:, 2] * off[:, 3] / 224**2, tv[:, 2] * tv[:, 3] / 224**2
    assert a_off.mean() < 0.44 < 0.46 < a_tv.mean() < 0.56
    assert (a_tv < 0.1).float().mean() > 0.015 and (a_off < 0.1).sum() == 0


def test_torchvision_sampler_follows_its_ranges():
    boxes = torchvision_boxes(5000, 100, 100, torch.Generator().manual_seed(0))
    area = boxes[:, 2] * boxes[:, 3] / 1e4
    ratio = boxes[:, 2] / boxes[:, 3]
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert ratio.min() >= 0.70 and ratio.max() <= 1.40
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 100).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 100).all()
    assert 0.45 < area.mean().item() < 0.62  # uniform in [0.08, 1] has mean 0.54


def test_no_crop_is_the_whole_image_for_every_view():
    boxes = sample_boxes(3, 30, 40, AugmentConfig(crop=False))
    assert boxes.tolist() == [[0, 0, 40, 30]] * 3


def _tf_center_crop_box(H, W, crop_proportion, out_h=1, out_w=1):
    """tf2/data_util.py center_crop for an (out_h, out_w) output: (offset_h, offset_w, crop_h, crop_w)."""
    aspect_ratio = out_h / out_w  # the official passes height / width
    if aspect_ratio > W / H:
        crop_h = int(np.rint(crop_proportion / aspect_ratio * W))
        crop_w = int(np.rint(crop_proportion * W))
    else:
        crop_h = int(np.rint(crop_proportion * H))
        crop_w = int(np.rint(crop_proportion * aspect_ratio * H))
    return ((H - crop_h) + 1) // 2, ((W - crop_w) + 1) // 2, crop_h, crop_w


@pytest.mark.parametrize("H,W", [(256, 256), (375, 500), (500, 375), (333, 500), (97, 130), (32, 32), (7, 9)])
@pytest.mark.parametrize("fraction", [0.875, 1.0, 0.5])
def test_center_box_is_the_official_formula(H, W, fraction):
    assert center_box(H, W, fraction) == _tf_center_crop_box(H, W, fraction)


def test_center_resize_is_crop_then_bicubic():
    from simclr.data.augment import center_resize

    x = torch.rand(2, 3, 300, 400)
    top, left, ch, cw = _tf_center_crop_box(300, 400, 0.875)
    ref = torch.nn.functional.interpolate(x[:, :, top : top + ch, left : left + cw], size=(64, 64), mode="bicubic",
                                          align_corners=False, antialias=True).clamp(0, 1)
    assert torch.allclose(center_resize(x, 64, 0.875), ref, atol=1e-5)
    # the whole-square view is what fraction 1 gives: 256 -> 224 resize of the centre square
    assert not torch.allclose(center_resize(x, 64, 1.0), ref, atol=1e-2)


# -- the loader's two views from the full frame ---------------------------------------------


def _photo(w: int, h: int, seed: int = 0) -> bytes:
    """A JPEG with detail at every scale (smooth gradients plus noise), as photos have."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx / w * 255), (yy / h * 255), ((xx + yy) % 97) * 2.6], -1)
    img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _full_decode_views(src, boxes, size):
    im = decode_image(io.BytesIO(src) if isinstance(src, bytes) else src)
    return torch.stack([to_tensor(im.resize((size, size), Image.BICUBIC, box=(x, y, x + w, y + h), reducing_gap=None))
                        for x, y, w, h in boxes.tolist()])


@pytest.fixture(params=["libjpeg-turbo", "pillow"])
def decoder(request, monkeypatch):
    """Both JPEG decoders of ViewCropper: simplejpeg (when installed) and Pillow's draft."""
    import simclr.data.crop as crop

    if request.param == "pillow":
        monkeypatch.setattr(crop, "_simplejpeg", None)
    elif crop._simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    return request.param


@pytest.mark.slow
def test_reduced_scale_decode_matches_full_decode(decoder):
    src = _photo(1600, 1200)
    cropper = ViewCropper(96)
    reduced_used = 0
    for seed in range(40):
        boxes = cropper.boxes(1200, 1600, torch.Generator().manual_seed(seed))
        views = cropper(src, torch.Generator().manual_seed(seed))
        assert views.shape == (2, 3, 96, 96) and views.dtype == torch.uint8
        ref = _full_decode_views(src, boxes, 96)
        mad = (views.float() - ref.float()).abs().mean().item() / 255
        assert mad < 0.02, (seed, mad)
        reduced_used += bool((boxes[:, 2:].min() / 96).item() >= 2)
    assert reduced_used > 20  # the reduced path was exercised, not just the full one


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="../shared/data/photos is absent")
def test_reduced_scale_decode_matches_full_decode_on_real_photos(decoder):
    files = sorted(PHOTOS.glob("*.jpg"))[::12]
    cropper, full = ViewCropper(64), ViewCropper(64, reduced_decode=False)
    mads = []
    for i, f in enumerate(files):
        a = cropper(f, torch.Generator().manual_seed(i)).float()
        b = full(f, torch.Generator().manual_seed(i)).float()
        mads.append((a - b).abs().mean().item() / 255)
    assert max(mads) < 0.02, max(mads)


def test_views_cover_the_whole_frame_of_a_wide_image():
    """Red bands at the left and right edges of a 400x300 photo appear in views (a centre square never shows them)."""
    img = np.full((300, 400, 3), 128, np.uint8)
    img[:, :30] = img[:, -30:] = (255, 0, 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95)
    cropper = ViewCropper(64)
    hits = 0
    for seed in range(200):
        v = cropper(buf.getvalue(), torch.Generator().manual_seed(seed)).int()
        red = (v[:, 0] > 200) & (v[:, 1] < 60) & (v[:, 2] < 60)
        hits += int(red.flatten(1).any(1).sum())
    assert hits / 400 > 0.2


@pytest.mark.parametrize("tag", range(1, 9))
def test_every_exif_orientation_is_shown_as_pillow_shows_it(tag, decoder):
    """The views of the whole frame (no crop) equal Pillow's exif_transpose of the image, resized, for all 8 tags."""
    yy, xx = np.mgrid[0:120, 0:180]  # gradients and 15 px blocks: any wrong turn or mirror shows
    stored = Image.fromarray(np.stack([xx / 180 * 255, yy / 120 * 255, (xx // 15 + yy // 15) % 2 * 255], -1).astype(np.uint8))
    exif = stored.getexif()
    exif[0x0112] = tag
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    shown = decode_image(io.BytesIO(buf.getvalue()))
    ref = to_tensor(shown.resize((40, 40), Image.BICUBIC, reducing_gap=None)).float()
    full = ViewCropper(40, AugmentConfig(crop=False), reduced_decode=False)(buf.getvalue()).float()
    assert (full[0] - ref).abs().mean() < 1.0  # grey levels: the JPEG decoders differ by rounding only
    # decoded at 1/2 scale (crops of 120 px for 40): about 2 levels off; a wrong turn would be tens
    reduced = ViewCropper(40, AugmentConfig(crop=False))(buf.getvalue()).float()
    assert (reduced[0] - ref).abs().mean() < 4.0


def test_grayscale_and_cmyk_jpegs_give_rgb_views(decoder):
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        Image.new(mode, (150, 100), 90 if mode == "L" else (10, 20, 30, 0)).save(buf, "JPEG")
        v = ViewCropper(32)(buf.getvalue(), torch.Generator().manual_seed(0))
        assert v.shape == (2, 3, 32, 32) and v.dtype == torch.uint8
        assert (v[:, 0] == v[:, 1]).all() if mode == "L" else v.float().std(dim=(0, 2, 3)).max() < 3  # one colour


def test_exif_rotated_photo_is_cropped_as_shown():
    """A portrait stored as landscape with EXIF orientation 6: boxes are drawn in the shown frame."""
    stored = np.zeros((100, 200, 3), np.uint8)
    stored[:, :100] = 255  # left half white in the stored frame -> top half after rotating 90 degrees clockwise
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif)
    cropper = ViewCropper(32, AugmentConfig(crop=False))
    v = cropper(buf.getvalue()).float()
    assert v[0, :, :12].mean() > 200 and v[0, :, -12:].mean() < 50  # top white, bottom black, as shown


def test_bad_input_is_bad_image_error(tmp_path, decoder):
    cropper = ViewCropper(32)
    with pytest.raises(BadImageError, match="empty"):
        cropper(b"")
    with pytest.raises(BadImageError):
        cropper(b"not an image at all")
    src = _photo(200, 150)
    with pytest.raises(BadImageError):
        cropper(src[: len(src) // 2])  # truncated after a valid header
    with pytest.raises(BadImageError, match="not found"):
        cropper(tmp_path / "missing.jpg")


def test_full_scale_views_equal_pillow_bicubic_within_one_level():
    src = _photo(500, 375, seed=3)
    cropper = ViewCropper(112, reduced_decode=False)
    for seed in range(10):
        boxes = cropper.boxes(375, 500, torch.Generator().manual_seed(seed))
        diff = (cropper(src, torch.Generator().manual_seed(seed)).int() - _full_decode_views(src, boxes, 112).int()).abs()
        # Pillow's filter reads pixels just outside the box; the crop-then-resize does not: edges differ a little
        inner = diff[..., 2:-2, 2:-2]
        assert inner.max() <= 2 and diff.float().mean() < 0.1, (inner.max(), diff.float().mean())


def test_streamed_batches_of_views_are_a_pure_function_of_seed_epoch_and_position(tmp_path):
    """Exact resume for full-frame crops: a mid-epoch start yields the same views as the uninterrupted epoch,
    with or without worker processes; another epoch cuts other views."""
    from simclr.config import DataConfig
    from simclr.data import Batches, load_dataset

    for i in range(12):
        (tmp_path / f"{i:02d}.jpg").write_bytes(_photo(160 + 8 * i, 120, seed=i))
    ds = load_dataset(str(tmp_path), DataConfig(image_size=32))
    assert ds.streamed
    cropper = ViewCropper(32, AugmentConfig(), ds.max_pixels)
    full = [x for x, _, _ in Batches(ds, 4, seed=3, num_workers=0, cropper=cropper).epoch(1)]
    assert all(x.shape == (4, 2, 3, 32, 32) and x.dtype == torch.uint8 for x in full)
    tail = [x for x, _, _ in Batches(ds, 4, seed=3, num_workers=2, cropper=cropper).epoch(1, start_step=1)]
    assert len(tail) == 2 and all(torch.equal(a, b) for a, b in zip(full[1:], tail))
    other = [x for x, _, _ in Batches(ds, 4, seed=3, num_workers=0, cropper=cropper).epoch(2)]
    assert not any(torch.equal(a, b) for a in full for b in other)
    assert not torch.equal(full[0][:, 0], full[0][:, 1])  # the two views of an image differ


@pytest.mark.parametrize("sampler", [official_boxes, torchvision_boxes])
def test_device_tensors_and_cpu_arrays_give_the_same_boxes(sampler, monkeypatch):
    """On a GPU the samplers run on torch tensors, on the CPU on numpy arrays: the same code and draws, the same boxes."""
    import simclr.data.crop as crop

    cpu = sampler(64, 375, 500, torch.Generator().manual_seed(7))
    real = crop._uniforms
    monkeypatch.setattr(crop, "_uniforms", lambda *a: [torch.from_numpy(u) for u in real(*a)])  # the device branch
    dev = sampler(64, 375, 500, torch.Generator().manual_seed(7))
    assert torch.equal(cpu, dev) and cpu.dtype == dev.dtype == torch.float64


def test_a_jpeg_pillow_reads_is_not_refused_by_the_fast_decoder(decoder):
    """A stray restart marker in the scan: libjpeg-turbo in strict mode refuses it, Pillow steps over it; the
    loader must use such a file as indexing and evaluation do."""
    data = bytearray(_photo(320, 240, seed=5))
    sos = data.index(b"\xff\xda")
    pos = sos + (len(data) - sos) // 2
    data[pos:pos] = b"\xff\xd3"
    src = bytes(data)
    decode_image(io.BytesIO(src))  # Pillow reads it
    v = ViewCropper(32)(src, torch.Generator().manual_seed(0))
    assert v.shape == (2, 3, 32, 32)


def test_phone_photos_take_the_fast_path(monkeypatch):
    """Phone cameras write MPO (JPEG + a preview image): Pillow calls it MPO; it is a JPEG to libjpeg-turbo."""
    import simclr.data.crop as crop

    if crop._simplejpeg is None:
        pytest.skip("simplejpeg is not installed")
    im = Image.open(io.BytesIO(_photo(240, 180)))
    buf = io.BytesIO()
    im.save(buf, "MPO", save_all=True, append_images=[im.resize((120, 90))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    calls = []
    real = ViewCropper._decode_jpeg
    monkeypatch.setattr(ViewCropper, "_decode_jpeg", lambda self, *a: calls.append(1) or real(self, *a))
    assert ViewCropper(32)(buf.getvalue()).shape == (2, 3, 32, 32) and calls


def test_a_view_without_crop_gets_the_whole_frame_and_the_other_view_its_usual_box():
    """Per-view lists (augment.view1/view2) without 'crop': the loader cuts the whole frame for that view; the
    boxes of the other view are the ones it would get anyway (the draws are unchanged)."""
    from simclr.config import AugmentConfig
    from simclr.data.crop import ViewCropper

    both = ViewCropper(32, AugmentConfig())
    second_whole = ViewCropper(32, AugmentConfig(), crops=(True, False))
    a = both.boxes(300, 400, torch.Generator().manual_seed(3))
    b = second_whole.boxes(300, 400, torch.Generator().manual_seed(3))
    assert torch.equal(b[0], a[0]) and not torch.equal(a[1], b[1])
    assert b[1].tolist() == [0.0, 0.0, 400.0, 300.0]
    off = ViewCropper(32, AugmentConfig(crop=False), crops=(False, True)).boxes(30, 40)
    assert off.tolist() == [[0.0, 0.0, 40.0, 30.0]] * 2


def test_the_trainer_cuts_what_the_view_lists_ask_for(tmp_path):
    import numpy as np
    from PIL import Image

    from conftest import tiny_config
    from simclr.train.pretrain import load_training_data
    from simclr.train.trainer import training_input

    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    cfg, train, _ = load_training_data(tiny_config(tmp_path / "run", data__path=str(tmp_path), data__image_size=32,
                                                   augment__view1="crop,sobel", augment__view2="none"))
    assert train.streamed
    _, batches = training_input(cfg, train, 4)
    assert batches.cropper.crops == (True, False)
