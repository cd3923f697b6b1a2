"""CIFAR archives from a local server: download, atomic extraction, verified and safely read cache."""

import hashlib
import http.server
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest

from simclr.config import DataConfig
from simclr.data import DataError, load_cifar, load_dataset
from simclr.data import cifar as cifar_module
from simclr.data.cifar import MANIFEST, _safe_extract

FOLDER = "cifar-10-batches-py"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled as the official archive is: Python 2 protocol 2, numpy.core names, byte
    strings as str (written opcode by opcode; Python 3's pickler cannot produce it)."""
    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", v)

    dtype = b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R" + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
             + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89" + s(data.tobytes()) + b"tb")
    lst = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"batch_label") + s(b"training batch") + s(b"data") + array + s(b"labels") + lst + b"u."


def _tiny_cifar10(py2: bool = False, corrupt: str = "") -> bytes:
    rng = np.random.default_rng(0)
    files = {}
    for name in BATCHES:
        data, labels = rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, 10, 4).tolist()
        files[name] = _py2_batch(data, labels) if py2 else pickle.dumps({"data": data, "labels": labels}, protocol=4)
    files["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2)
    if corrupt:
        files[corrupt] = files[corrupt][:100]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def serve(payload: bytes):
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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", hashlib.md5(payload).hexdigest(), hits


@pytest.fixture()
def served_archive():
    server, base, md5, hits = serve(_tiny_cifar10())
    try:
        yield base, md5, hits
    finally:
        server.shutdown()


def load(tmp_path, served, split="train", name="cifar-10-python.tar.gz"):
    base, md5, _ = served
    return load_cifar("cifar10", split, tmp_path, url=f"{base}/{name}", md5=md5)


def test_cifar_download_verify_and_load(tmp_path, served_archive):
    train = load(tmp_path, served_archive)
    assert train.images.shape == (20, 3, 32, 32) and len(train.classes) == 10
    assert len(load(tmp_path, served_archive, "test")) == 4
    assert len(served_archive[2]) == 1  # the second load used the extracted files
    manifest = json.loads((tmp_path / FOLDER / MANIFEST).read_text())
    assert set(manifest["files"]) == set(BATCHES) | {"batches.meta"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_cifar_download_retries(tmp_path, served_archive):
    assert len(load(tmp_path, served_archive, name="flaky")) == 20 and len(served_archive[2]) == 2


def test_cifar_checksum_mismatch_is_refused(tmp_path, served_archive):
    base, _, _ = served_archive
    with pytest.raises(DataError, match="checksum mismatch"):
        load_cifar("cifar10", "train", tmp_path, url=f"{base}/x.tar.gz", md5="0" * 32)
    assert not any(tmp_path.glob("*.tar.gz"))  # nothing unverified is left behind


def test_load_dataset_reads_data_dir_from_config(tmp_path, served_archive):
    load(tmp_path, served_archive)  # fills the cache
    ds = load_dataset("cifar10:test", DataConfig(data_dir=str(tmp_path), image_size=16))
    assert ds.images.shape == (4, 3, 16, 16)


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


# -- the cache is not trusted -----------------------------------------------------------------

class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_batch_is_replaced_from_the_archive(tmp_path, served_archive):
    good = load(tmp_path, served_archive)
    marker = tmp_path / "pwned"
    (tmp_path / FOLDER / "data_batch_1").write_bytes(pickle.dumps(Planted(marker)))
    again = load(tmp_path, served_archive)
    assert not marker.exists() and (again.images == good.images).all()
    assert len(served_archive[2]) == 1  # re-extracted from the verified archive, not downloaded


def test_planted_batch_with_forged_manifest_runs_no_code(tmp_path, served_archive):
    load(tmp_path, served_archive)
    marker = tmp_path / "pwned"
    batch = tmp_path / FOLDER / "data_batch_1"
    batch.write_bytes(pickle.dumps(Planted(marker)))
    manifest = json.loads((tmp_path / FOLDER / MANIFEST).read_text())
    manifest["files"]["data_batch_1"] = hashlib.md5(batch.read_bytes()).hexdigest()
    (tmp_path / FOLDER / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"refusing to load (posix|os)\.system.*delete the cache folder") as e:
        load(tmp_path, served_archive)
    assert "\n" not in str(e.value) and not marker.exists()


def test_missing_or_changed_file_is_re_extracted(tmp_path, served_archive):
    load(tmp_path, served_archive)
    (tmp_path / FOLDER / "test_batch").unlink()
    with open(tmp_path / FOLDER / "data_batch_3", "r+b") as f:
        f.seek(200)
        f.write(b"\x00" * 16)
    assert len(load(tmp_path, served_archive)) == 20 and len(load(tmp_path, served_archive, "test")) == 4
    assert len(served_archive[2]) == 1


def test_interrupted_extraction_leaves_nothing_and_is_cleaned_up(tmp_path, served_archive, monkeypatch):
    real = cifar_module._safe_extract

    def interrupted(archive, target):
        real(archive, target)
        raise KeyboardInterrupt  # e.g. Ctrl-C half way

    monkeypatch.setattr(cifar_module, "_safe_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(tmp_path, served_archive)
    assert not (tmp_path / FOLDER).exists()
    monkeypatch.undo()
    # a half folder from an older version, and temporary folders of a dead and of a live process
    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "data_batch_1").write_bytes(b"\x80\x02half")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = cifar_module.socket.gethostname()
    stale = tmp_path / f"{cifar_module._TEMP_PREFIX}{FOLDER}+{host}+{dead.pid}+abc"
    live = tmp_path / f"{cifar_module._TEMP_PREFIX}{FOLDER}+{host}+{os.getppid()}+def"
    for d in (stale, live):
        (d / FOLDER).mkdir(parents=True)
    assert len(load(tmp_path, served_archive)) == 20
    assert not stale.exists() and live.exists()
    assert len(served_archive[2]) == 1  # the verified archive was kept and reused


def test_corrupt_batch_in_the_archive_is_one_line(tmp_path):
    server, base, md5, _ = serve(_tiny_cifar10(corrupt="data_batch_2"))
    try:
        with pytest.raises(DataError, match=r"data_batch_2 is not a valid CIFAR file .*delete the cache folder") as e:
            load_cifar("cifar10", "train", tmp_path, url=f"{base}/a.tar.gz", md5=md5)
    finally:
        server.shutdown()
    assert "\n" not in str(e.value)


def test_official_python2_format_loads(tmp_path):
    payload = _tiny_cifar10(py2=True)
    with tarfile.open(fileobj=io.BytesIO(payload)) as tar:  # sanity: plain pickle reads it as official files are read
        d = pickle.loads(tar.extractfile(f"{FOLDER}/data_batch_1").read(), encoding="latin1")
    assert d["data"].shape == (4, 3072) and d["data"].dtype == np.uint8
    server, base, md5, _ = serve(payload)
    try:
        ds = load_cifar("cifar10", "train", tmp_path, url=f"{base}/a.tar.gz", md5=md5)
    finally:
        server.shutdown()
    assert ds.images.shape == (20, 3, 32, 32)
    assert (ds.images[:4].reshape(4, -1).numpy() == d["data"]).all() and ds.labels[:4].tolist() == d["labels"]


def test_folder_without_manifest_checks_official_checksums(tmp_path):
    (tmp_path / FOLDER).mkdir()
    for name in BATCHES + ["batches.meta"]:
        (tmp_path / FOLDER / name).write_bytes(b"x")
    assert "does not match" in cifar_module._problem(tmp_path / FOLDER, ["data_batch_1"])
