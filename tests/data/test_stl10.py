"""STL-10 from a local server: a tiny archive in the official binary layout, its download, verified
cache, memory-mapped images (column-major planes) and one-line errors."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from test_cifar import serve  # tests/data is on sys.path (no __init__.py)

from simclr.config import DataConfig
from simclr.data import DataError, load_dataset, load_stl10, parse_spec
from simclr.data import cifar as cifar_module
from simclr.data import stl10 as stl10_module
from simclr.data.augment import center_resize
from simclr.data.cifar import MANIFEST

FOLDER = "stl10_binary"
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
COUNTS = {"train": 6, "test": 4, "unlabeled": 5}
TRAIN_Y = [1, 2, 3, 10, 5, 1]  # as on disk: 1-based
TEST_Y = [10, 9, 8, 1]


def _pictures(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 3, 96, 96) as (channel, row, column): value r + 3c + 50ch + seed + 17i mod 256, so that no image
    is symmetric (pixel (r, c) differs from (c, r))."""
    i, ch, r, c = np.ogrid[:n, :3, :96, :96]
    return ((r + 3 * c + 50 * ch + seed + 17 * i) % 256).astype(np.uint8)


def _x_file(images: np.ndarray) -> bytes:
    """The official encoding: image after image, plane after plane, each plane column-major."""
    return np.ascontiguousarray(images.transpose(0, 1, 3, 2)).tobytes()


IMAGES = {"train": _pictures(6, 0), "test": _pictures(4, 100), "unlabeled": _pictures(5, 200)}


def _files() -> dict[str, bytes]:
    return {
        "train_X.bin": _x_file(IMAGES["train"]),
        "train_y.bin": bytes(TRAIN_Y),
        "test_X.bin": _x_file(IMAGES["test"]),
        "test_y.bin": bytes(TEST_Y),
        "unlabeled_X.bin": _x_file(IMAGES["unlabeled"]),
        "class_names.txt": "".join(f"{c}\n" for c in CLASSES).encode(),
        "fold_indices.txt": b"0 2 4 \n1 3 5 \n",
    }


def _archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        d = tarfile.TarInfo(FOLDER)
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def _server():
    server, base, md5, hits = serve(_archive(_files()))  # one server: each shutdown waits half a second
    try:
        yield base, md5, hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def served(_server):
    _server[2].clear()  # the requests of this test only
    return _server


def load(tmp_path, served, split="train", name="stl10_binary.tar.gz"):
    base, md5, _ = served
    return load_stl10(split, tmp_path, url=f"{base}/{name}", md5=md5)


def _load_broken(tmp_path, **changes) -> str:
    """The one-line error of loading an archive whose files are ``changes`` of the good ones; the archive
    is put in the cache, where a matching MD5 makes it used without a download."""
    files = _files()
    files.update(changes)
    payload = _archive(files)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "stl10_binary.tar.gz").write_bytes(payload)
    with pytest.raises(DataError) as e:
        load_stl10("train+unlabeled", tmp_path, url="http://127.0.0.1:9/unused", md5=hashlib.md5(payload).hexdigest())
    assert "\n" not in str(e.value)
    return str(e.value)


def test_stl10_download_verify_and_load_each_split(tmp_path, served):
    for split, n in COUNTS.items():
        ds = load(tmp_path, served, split)
        assert ds.images.shape == (n, 3, 96, 96) and ds.images.dtype == torch.uint8 and ds.classes == CLASSES
        assert torch.equal(ds.images, torch.from_numpy(IMAGES[split]))
    assert load(tmp_path, served, "train").labels.tolist() == [y - 1 for y in TRAIN_Y]
    assert load(tmp_path, served, "test").labels.tolist() == [y - 1 for y in TEST_Y]
    unlabeled = load(tmp_path, served, "unlabeled")
    assert unlabeled.labels.tolist() == [-1] * 5 and unlabeled.labels.dtype == torch.long and not unlabeled.has_labels
    assert len(served[2]) == 1  # downloaded once; later loads read the extracted files
    manifest = json.loads((tmp_path / FOLDER / MANIFEST).read_text())
    assert set(manifest["files"]) == set(_files())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_planes_are_column_major_on_disk(tmp_path, served):
    ds = load(tmp_path, served, "test")
    raw = (tmp_path / FOLDER / "test_X.bin").read_bytes()
    image, plane, r, c = 2, 1, 5, 40
    offset = image * 3 * 96 * 96 + plane * 96 * 96 + c * 96 + r  # the format: column c, then row r within it
    assert ds.images[image, plane, r, c].item() == raw[offset] != ds.images[image, plane, c, r].item()


def test_images_are_a_memory_mapped_view_and_batches_are_contiguous(tmp_path, served):
    ds = load(tmp_path, served, "unlabeled")
    assert not ds.images.is_contiguous()  # the transposed view of the file, not a copy
    idx = torch.tensor([4, 0, 2])
    batch = ds.get(idx)
    assert batch.is_contiguous() and batch.shape == (3, 3, 96, 96)
    assert torch.equal(batch, torch.from_numpy(IMAGES["unlabeled"][[4, 0, 2]]))
    before = (tmp_path / FOLDER / "unlabeled_X.bin").read_bytes()
    ds.images[0] = 0  # copy-on-write: this process's copy only, never the file
    assert (tmp_path / FOLDER / "unlabeled_X.bin").read_bytes() == before


def test_train_plus_unlabeled_concatenates(tmp_path, served):
    ds = load(tmp_path, served, "train+unlabeled")
    assert ds.images.shape == (11, 3, 96, 96) and ds.images.is_contiguous()
    assert torch.equal(ds.images, torch.from_numpy(np.concatenate([IMAGES["train"], IMAGES["unlabeled"]])))
    assert ds.labels.tolist() == [y - 1 for y in TRAIN_Y] + [-1] * 5


def test_download_retries(tmp_path, served):
    assert len(load(tmp_path, served, name="flaky")) == 6 and len(served[2]) == 2


def test_checksum_mismatch_is_refused(tmp_path, served):
    base, _, _ = served
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_stl10("train", tmp_path, url=f"{base}/x.tar.gz", md5="0" * 32)
    assert "\n" not in str(e.value)
    assert not any(tmp_path.glob("*.tar.gz")) and not (tmp_path / FOLDER).exists()


@pytest.mark.parametrize("name,cut", [("train_X.bin", 100), ("unlabeled_X.bin", 1), ("train_X.bin", 3 * 96 * 96)])
def test_wrong_size_image_file_is_one_line(tmp_path, name, cut):
    data = _files()[name]
    msg = _load_broken(tmp_path, **{name: data[:-cut]})
    assert name in msg and "truncated or not an STL-10 file" in msg and "delete the cache folder" in msg


def test_bad_labels_and_class_names_are_one_line(tmp_path):
    assert "does not hold STL-10 labels" in _load_broken(tmp_path / "a", **{"train_y.bin": bytes([0, 1, 2, 3, 4, 5])})
    assert "holds no class names" in _load_broken(tmp_path / "b", **{"class_names.txt": b"\n"})


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match=r"use :train, :test, :unlabeled or :train\+unlabeled"):
        parse_spec("stl10:val")
    with pytest.raises(DataError, match="unknown STL-10 split 'val'; use train, test, unlabeled, train\\+unlabeled"):
        load_stl10("val", tmp_path)
    assert parse_spec("STL10") == ("stl10", "train") and parse_spec("stl10:train+unlabeled") == ("stl10", "train+unlabeled")
    with pytest.raises(DataError, match="use :train or :test"):  # the other built-in sets are unchanged
        parse_spec("cifar10:unlabeled")


def test_changed_file_is_re_extracted_without_downloading(tmp_path, served):
    load(tmp_path, served, "train")
    with open(tmp_path / FOLDER / "train_X.bin", "r+b") as f:  # truncated after extraction
        f.truncate(1000)
    (tmp_path / FOLDER / "test_y.bin").unlink()
    assert torch.equal(load(tmp_path, served, "train").images, torch.from_numpy(IMAGES["train"]))
    assert len(load(tmp_path, served, "test")) == 4 and len(served[2]) == 1


def test_interrupted_extraction_leaves_nothing(tmp_path, served, monkeypatch):
    real = cifar_module._safe_extract

    def interrupted(archive, target):
        real(archive, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(cifar_module, "_safe_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(tmp_path, served)
    assert not (tmp_path / FOLDER).exists()
    monkeypatch.undo()
    assert len(load(tmp_path, served)) == 6 and len(served[2]) == 1  # the verified archive was kept


def test_folder_without_manifest_checks_official_checksums(tmp_path):
    (tmp_path / FOLDER).mkdir()
    for name, data in _files().items():  # e.g. extracted by torchvision: no manifest
        (tmp_path / FOLDER / name).write_bytes(data)
    assert "does not match" in stl10_module._stl_problem(tmp_path / FOLDER, ["class_names.txt", "train_X.bin"])
    assert stl10_module._stl_problem(tmp_path / FOLDER, ["class_names.txt", "fold_indices.txt"]) is None


def test_load_dataset_entry_point(tmp_path, served):
    load(tmp_path, served, "train")  # fills the cache
    ds = load_dataset("stl10:test", DataConfig(data_dir=str(tmp_path)))
    assert ds.images.shape == (4, 3, 96, 96) and ds.labels.tolist() == [y - 1 for y in TEST_Y]
    small = load_dataset("stl10:test", DataConfig(data_dir=str(tmp_path), image_size=32))
    want = (center_resize(torch.from_numpy(IMAGES["test"]), 32) * 255).round().to(torch.uint8)
    assert torch.equal(small.images, want)  # the chunked resize equals the one-shot one
    # max_per_class: the first N of each class, unlabelled images counting as one class
    few = load_dataset("stl10:train+unlabeled", DataConfig(data_dir=str(tmp_path), max_per_class=1))
    assert few.labels.tolist() == [0, 1, 2, 9, 4, -1]
    assert torch.equal(few.images[-1], torch.from_numpy(IMAGES["unlabeled"][0]))
    assert len(served[2]) == 1
