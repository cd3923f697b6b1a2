"""Datasets: folders, conversions, batching, CIFAR archives from a local server, synthetic."""

import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_folder
from simclr.data import Batches, DataError, _safe_extract, list_images, load_cifar, load_dataset, load_folder, synthetic_images


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
    assert len(load_folder(tmp_path, max_per_class=2)) == 4


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
    from simclr.data import decode_image

    assert decode_image(tmp_path / "c" / "r.jpg").size == (10, 20)


def test_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "nope")
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(DataError, match="no data given"):
        load_dataset("")


def test_large_images_stream(tmp_path):
    write_folder(tmp_path, per_class=2, size=(150, 120))
    ds = load_folder(tmp_path, image_size=64)
    assert ds.images is None and ds.load_size == 74
    x = ds.get(torch.tensor([0, 3]))
    assert x.shape == (2, 3, 74, 74) and x.dtype == torch.uint8
    b = Batches(ds, 2, seed=0, num_workers=0)
    batches = list(b.epoch(0))
    assert len(batches) == 2 and batches[0][0].shape == (2, 3, 74, 74)


def test_batches_deterministic_and_drop_last(tmp_path):
    ds = synthetic_images(10, seed=0, size=8)
    b = Batches(ds, 3, seed=5)
    assert len(b) == 3
    e0 = [idx.tolist() for _, _, idx in b.epoch(0)]
    assert e0 == [idx.tolist() for _, _, idx in b.epoch(0)]
    assert e0 != [idx.tolist() for _, _, idx in b.epoch(1)]
    assert len({i for idx in e0 for i in idx}) == 9
    # resuming mid-epoch yields the remaining batches
    assert [idx.tolist() for _, _, idx in b.epoch(0, start_step=1)] == e0[1:]
    x, y, idx = next(iter(b.epoch(0)))
    torch.testing.assert_close(x, ds.images[idx])
    torch.testing.assert_close(y, ds.labels[idx])


def test_dataset_smaller_than_batch():
    with pytest.raises(DataError, match="fewer than one batch"):
        Batches(synthetic_images(4, seed=0, size=8), 8, seed=0)


def test_synthetic_is_deterministic_and_balanced():
    a, b = synthetic_images(200, seed=3), synthetic_images(200, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (200, 3, 32, 32) and len(a.classes) == 10
    assert len(torch.unique(a.labels)) == 10
    assert not torch.equal(a.images, synthetic_images(200, seed=4).images)


# -- CIFAR archive served from 127.0.0.1 -------------------------------------------------------

def _tiny_cifar10() -> bytes:
    rng = np.random.default_rng(0)
    files = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        files[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, 4))}
    files["batches.meta"] = {"label_names": [f"c{i}" for i in range(10)]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in files.items():
            data = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def served_archive():
    payload = _tiny_cifar10()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            if self.path.endswith("flaky") and len(hits) == 1:
                self.send_response(500)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.md5(payload).hexdigest(), hits
    finally:
        server.shutdown()


def test_cifar_download_verify_and_load(tmp_path, served_archive):
    base, md5, hits = served_archive
    train = load_cifar("cifar10", "train", tmp_path, url=f"{base}/cifar-10-python.tar.gz", md5=md5)
    assert train.images.shape == (20, 3, 32, 32) and len(train.classes) == 10
    test = load_cifar("cifar10", "test", tmp_path, url=f"{base}/cifar-10-python.tar.gz", md5=md5)
    assert len(test) == 4
    assert len(hits) == 1  # the second load used the extracted files


def test_cifar_download_retries(tmp_path, served_archive):
    base, md5, hits = served_archive
    ds = load_cifar("cifar10", "train", tmp_path, url=f"{base}/flaky", md5=md5)
    assert len(ds) == 20 and len(hits) == 2


def test_cifar_checksum_mismatch_is_refused(tmp_path, served_archive):
    base, _, _ = served_archive
    with pytest.raises(DataError, match="checksum mismatch"):
        load_cifar("cifar10", "train", tmp_path, url=f"{base}/x.tar.gz", md5="0" * 32)
    assert not any(tmp_path.glob("*.tar.gz"))  # nothing unverified is left behind


@pytest.mark.parametrize("kind", ["dotdot", "symlink", "absolute"])
def test_unsafe_archive_is_refused(tmp_path, kind):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        if kind == "symlink":
            info = tarfile.TarInfo("link")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo("../escape.txt" if kind == "dotdot" else "/tmp/abs-escape.txt")
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="unsafe archive member"):
        _safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_cifar_folder_from_shared(cifar_jpeg):
    ds = load_folder(cifar_jpeg / "test", max_per_class=3)
    assert ds.images.shape == (30, 3, 32, 32) and ds.classes[0] == "airplane"


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((6, 6), 32768, dtype=np.uint16)).save(tmp_path / "c" / "g.png")
    ds = load_folder(tmp_path)
    assert abs(int(ds.images[0, 0, 0, 0]) - 128) <= 1


def test_pixel_limit(tmp_path):
    (tmp_path / "c").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "c" / "big.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "small.png")
    ds = load_folder(tmp_path, max_pixels=1000)
    assert len(ds) == 1 and "exceeds the limit of 1000" in ds.bad[0][1]
