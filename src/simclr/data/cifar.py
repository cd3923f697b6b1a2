"""CIFAR-10/100 from the official python-format archives, with a cache that is not trusted.

The archive is downloaded (atomically, MD5-verified) into the data folder and extracted there:
into a temporary folder beside the target, renamed into place only when complete, with a manifest
of each extracted file's MD5. Every load verifies the files it reads against that manifest (or,
for a folder extracted by other tools, against the official checksums) and re-extracts from the
verified archive when one is missing or changed. Batch files are pickles: they are read with a
restricted unpickler that admits only what the official files contain (dicts, lists, strings,
numbers and numpy arrays), so a planted file cannot run code. Every failure is a one-line DataError.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr.data.errors import DataError, describe, printable
from simclr.data.imageset import ImageSet

__all__ = ["CIFAR_SOURCES", "MANIFEST", "default_data_dir", "download", "load_cifar"]

CIFAR_SOURCES = {
    "cifar10": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        label_key="labels",
        meta=("batches.meta", "label_names"),
        # MD5 of the extracted files of the official archive (the values torchvision checks)
        checksums={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    ),
    "cifar100": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        train=["train"],
        test=["test"],
        label_key="fine_labels",
        meta=("meta", "fine_label_names"),
        checksums={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    ),
}

MANIFEST = "simclr-manifest.json"  # written into the extracted folder: {"files": {name: md5}, ...}
_TEMP_PREFIX = ".simclr-extract+"  # + folder + host + pid + random; beside the target folder
_STALE_AFTER_S = 24 * 3600  # a temporary folder of another host is left alone for a day


def default_data_dir() -> Path:
    return Path(os.environ.get("SIMCLR_DATA_DIR", Path.home() / ".cache" / "simclr"))


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str, retries: int = 3, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (atomically) and verify its MD5; retry on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(retries):
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            got = _md5(Path(tmp))
            if got != md5:
                raise DataError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
            os.replace(tmp, dest)
            return dest
        except (OSError, DataError) as e:
            last = e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(f"could not download {url} after {retries} tries: {str(last).splitlines()[0] if last else ''}")


# ---------------------------------------------------------------------------------------------
# extraction


def _safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``target`` and links."""
    target = target.resolve()
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                dest = (target / member.name).resolve()
                if member.issym() or member.islnk() or not (dest == target or target in dest.parents):
                    raise DataError(f"refusing unsafe archive member {member.name!r} in {printable(archive)}")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"refusing special archive member {member.name!r} in {printable(archive)}")
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot extract {printable(archive)} ({describe(e)}); delete it and run again") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists
        return True
    return True


def _clean_stale_temps(root: Path, folder: str) -> None:
    """Remove temporary extraction folders left by interrupted runs (dead process on this host, or
    older than a day); those of a run still extracting are left alone."""
    host = socket.gethostname()
    for p in root.glob(f"{_TEMP_PREFIX}{folder}+*"):
        parts = p.name[len(_TEMP_PREFIX):].split("+")
        try:
            same_host, pid = parts[1] == host, int(parts[2])
            old = time.time() - p.stat().st_mtime > _STALE_AFTER_S
        except (IndexError, ValueError, OSError):
            continue
        if (same_host and not _pid_alive(pid)) or old:
            shutil.rmtree(p, ignore_errors=True)


def _extract(archive: Path, root: Path, folder: str) -> None:
    """Extract ``archive`` so that ``root/folder`` appears complete (with its manifest) or not at all."""
    _clean_stale_temps(root, folder)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f"{_TEMP_PREFIX}{folder}+{socket.gethostname()}+{os.getpid()}+"))
    try:
        _safe_extract(archive, tmp)
        got = tmp / folder
        if not got.is_dir():
            raise DataError(f"{printable(archive)} does not contain {folder}/; delete it and run again")
        files = {p.name: _md5(p) for p in sorted(got.iterdir()) if p.is_file()}
        (got / MANIFEST).write_text(json.dumps({"archive": archive.name, "archive_md5": _md5(archive), "files": files}, indent=1))
        target = root / folder
        if target.exists():
            if _problem(target, list(files)) is None:
                return  # another process finished the same extraction first
            os.rename(target, tmp / "stale")  # removed with tmp below
        try:
            os.rename(got, target)
        except OSError:
            if _problem(target, list(files)) is not None:  # someone else won the race with a good copy: fine
                raise
    except OSError as e:
        raise DataError(f"cannot extract {printable(archive)} into {printable(root)} ({describe(e)})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _problem(folder: Path, names: list[str]) -> str | None:
    """Why the files ``names`` of an extracted folder cannot be trusted, or None when they can."""
    if not folder.is_dir():
        return "not extracted"
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
            assert isinstance(files, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return f"{MANIFEST} is unreadable"
    else:  # extracted by an older version or another tool: the official checksums
        files = next((s["checksums"] for s in CIFAR_SOURCES.values() if s["folder"] == folder.name), {})
    for name in names:
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if name not in files:
            return f"{name} has no recorded checksum"
        if _md5(path) != files[name]:
            return f"{name} does not match its checksum"
    return None


# ---------------------------------------------------------------------------------------------
# reading batch files

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR batch needs (numpy array reconstruction); dicts, lists,
    strings and numbers need none. Anything else (os.system, builtins.eval, ...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def _read_pickle(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a broken or planted file
        raise DataError(f"{printable(path)} is not a valid CIFAR file ({describe(e)}); "
                        f"delete the cache folder {printable(path.parent)} and run again") from None


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    d = _read_pickle(path)
    data = d.get("data") if isinstance(d, dict) else None
    labels = d.get(label_key) if isinstance(d, dict) else None
    ok = (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
          and isinstance(labels, list) and len(labels) == data.shape[0]
          and all(isinstance(v, int) and 0 <= v < num_classes for v in labels))
    if not ok:
        raise DataError(f"{printable(path)} does not hold CIFAR images and labels; delete the cache folder "
                        f"{printable(path.parent)} and run again")
    return data.reshape(-1, 3, 32, 32), labels


def _read_classes(path: Path, key: str) -> list[str]:
    d = _read_pickle(path)
    names = d.get(key) if isinstance(d, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise DataError(f"{printable(path)} does not hold CIFAR class names; delete the cache folder "
                        f"{printable(path.parent)} and run again")
    return names


def load_cifar(name: str, split: str = "train", root: str | Path = "", url: str | None = None, md5: str | None = None) -> ImageSet:
    """CIFAR-10/100 from the official python-format archive, downloaded to ``root`` when absent.

    ``root`` "" is ``default_data_dir()`` ($SIMCLR_DATA_DIR or ~/.cache/simclr); ``url`` and
    ``md5`` override the official archive's (mirrors, tests).
    """
    src = CIFAR_SOURCES[name]
    root = Path(root) if root else default_data_dir()
    folder = root / src["folder"]
    meta_file, meta_key = src["meta"]
    needed = list(src[split]) + [meta_file]
    if root.is_dir():
        _clean_stale_temps(root, src["folder"])
    problem = _problem(folder, needed)
    if problem is not None:
        archive = root / Path(src["url"]).name
        want = md5 or src["md5"]
        root.mkdir(parents=True, exist_ok=True)
        if not archive.is_file() or _md5(archive) != want:
            download(url or src["url"], archive, want)
        _extract(archive, root, src["folder"])
        problem = _problem(folder, needed)
        if problem is not None:
            raise DataError(f"the CIFAR cache {printable(folder)} cannot be repaired from {printable(archive)} ({problem}); "
                            "delete the cache folder and run again")
    classes = _read_classes(folder / meta_file, meta_key)
    images, labels = [], []
    for batch in src[split]:
        x, y = _read_batch(folder / batch, src["label_key"], len(classes))
        images.append(x)
        labels += y
    return ImageSet(labels=torch.tensor(labels, dtype=torch.long), classes=classes, images=torch.from_numpy(np.concatenate(images)))
