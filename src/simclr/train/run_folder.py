"""A pretraining run's folder and everything written into it.

    RUN/config.yaml          the resolved config
    RUN/metrics.jsonl        one JSON line per epoch
    RUN/checkpoint.pt        the full training state (atomic; weights only, no pickled code)
    RUN/encoder.safetensors  the encoder alone, torchvision names
    RUN/checkpoints/         the last K epoch checkpoints (train.keep_checkpoints > 1)
    RUN/bad_files.txt        images that were skipped, with the reason
    RUN/.lock                who holds the folder (a POSIX lock, released when its process ends)

One process owns a folder at a time (``acquire``); a folder that holds a run is changed only to resume
it or, when the user says ``--overwrite``, to replace it. Every write is atomic or an append, and a
write that fails (a full disk, a folder that became read-only) raises RunFolderError with one line.
Only the main process of a distributed job writes (``is_main``); the others get a folder object whose
writes do nothing, so the trainer never asks who it is.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import torch

from simclr.checkpoint import (
    CheckpointError,
    atomic_write,
    first_line,
    load_checkpoint,
    nonfinite_tensors,
    save_checkpoint,
    save_encoder,
)
from simclr.config import save_config

__all__ = ["RunFolder", "RunFolderError", "RUN_FILES"]

# What a run writes; --overwrite removes exactly these (other files in the folder are the user's).
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "encoder.safetensors", "bad_files.txt", "checkpoints",
             "knn.json", "linear.json", "linear_z.json", "transforms.json", "hardness.json", "study_result.json",
             "demo.json", "metrics.png", "views.png", "tb", "finetuned.safetensors", "finetune.json", "finetune_labels.txt",
             "distill.json")
RUN_DIRS = ("checkpoints", "tb")  # the run's folders among RUN_FILES


class RunFolderError(CheckpointError):
    """The run folder cannot be used: taken by another process, holding another run, or not writable."""


class ImportedRun(CheckpointError):
    """The folder holds weights converted from another implementation (simclr import-official), no training state."""


class RunFolder:
    """Housekeeping of one run folder (see the module docstring)."""

    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # the folders acquire created, deepest first

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    # -- ownership -------------------------------------------------------------------------------
    def acquire(self, resume: bool, overwrite: bool, checkpoint_every: int = 1) -> bool:
        """Make the folder usable and take it for this process, before any data is read.

        Raises RunFolderError (one line) when the path cannot hold a folder we can write, when another
        process holds it, or when it holds a run and neither ``resume`` nor ``overwrite`` is given.
        With ``overwrite`` the previous run's files are removed. Returns True when there is a
        checkpoint to resume from (``resume`` and RUN/checkpoint.pt or a kept copy exists).
        """
        if not self.is_main:
            return resume and (os.path.lexists(self.checkpoint) or bool(self._kept()))
        if self.path.resolve() == Path(self.path.resolve().anchor):
            raise RunFolderError(f"refusing to use the filesystem root {self.path} as a run folder; choose a folder for the run")
        self._made = _make_folders(self.path)
        try:
            self._check_writable()
            self._lock()
        except BaseException:
            _remove_empty(self._made)
            raise
        try:
            self._check_file_kinds()
            held = [name for name in ("checkpoint.pt", "metrics.jsonl", "config.yaml", "encoder.safetensors")
                    if os.path.lexists(self.path / name)] + (["checkpoints/"] if self._kept() else [])
            if held and not resume and not overwrite:
                raise RunFolderError(f"{self.path} already holds a run ({', '.join(held)}); continue it with --resume, "
                                     "replace it with --overwrite, or choose another --out")
            if overwrite and not resume:
                self._remove_run_files()
            stale = list(self.path.glob(".*.tmp")) + list(self.path.glob("checkpoints/.*.tmp"))
            for tmp in stale:  # half-written files of a killed save; the files they were to replace are intact
                tmp.unlink(missing_ok=True)
            if stale:
                _notice(f"removed {len(stale)} unfinished temporary file(s) of an interrupted save in {self.path}")
            found = os.path.lexists(self.checkpoint) or bool(self._kept())
            if resume and not found:
                # A kill between an epoch's metrics line and its checkpoint leaves one such line; more, or the
                # encoder written after every checkpoint, mean a checkpoint existed and was removed.
                done = max([r["epoch"] for r in self.metrics()], default=0)
                if done > checkpoint_every or (self.path / "encoder.safetensors").exists():
                    raise RunFolderError(f"{self.path} holds a run of {done} epoch(s) whose {self.checkpoint.name} is missing; "
                                         "restore it, or start the run again with --overwrite")
                _notice(f"--resume: {self.path} has no checkpoint yet, so the run starts from the beginning")
            return resume and found
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the lock. A folder this process created that still holds only the lock (the command failed before
        writing anything: unreadable data, too few images for a batch) is removed with the folders made for it, so
        that a failed command leaves nothing behind."""
        if self._lock_fd is None:
            return
        try:
            if self._made and [p.name for p in self.path.iterdir()] == [".lock"]:
                (self.path / ".lock").unlink()  # while still locked: no other process can be using the folder
                _remove_empty(self._made)
        except OSError:
            pass
        finally:
            os.close(self._lock_fd)  # closing the descriptor drops the POSIX lock
            self._lock_fd = None

    def _check_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RunFolderError(f"cannot use {_show(self.path)} as a run folder: {e.strerror or first_line(e)}") from None

    def _check_file_kinds(self) -> None:
        """The run's files, where they exist, must be what the run will write: regular files and one folder."""
        for name in RUN_FILES:
            p = self.path / name
            if not os.path.lexists(p):
                continue
            want_dir = name in RUN_DIRS
            ok = p.is_dir() if want_dir else p.is_file()
            if not ok:
                kind = "folder" if want_dir else "regular file"
                raise RunFolderError(f"{_show(p)} is in the way: the run needs a {kind} there; move it or choose another --out")

    def _lock(self) -> None:
        # A POSIX record lock: per process (forked loader workers do not inherit it) and released by the
        # kernel when the holder exits, so a folder whose owner was killed is free again at once.
        try:  # O_NOFOLLOW: a .lock that is a link never makes us write into the file it points to
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise RunFolderError(f"cannot use {_show(self.path / '.lock')} as the run's lock file ({e.strerror}); "
                                 "remove it if it is a link or a folder") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(f"{self.path} is in use by {holder}; wait for that run to end or choose another --out") from None
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"simclr pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        self._lock_fd = fd

    def _remove_run_files(self) -> None:
        removed = []
        for name in RUN_FILES:
            p = self.path / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            else:
                continue
            removed.append(name)
        for p in self.path.glob("finetune-*"):
            if p.is_dir():
                shutil.rmtree(p)
                removed.append(p.name)
        if removed:
            _notice(f"--overwrite: removed the previous run's {', '.join(removed)} from {self.path}")

    # -- what a run writes ---------------------------------------------------------------------------
    def start(self, cfg, epoch: int) -> None:
        """Write the config and keep only the metrics of epochs up to ``epoch`` (the state being resumed;
        0 for a new run)."""
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / "config.yaml", lambda tmp: save_config(cfg, tmp))
        kept = [r for r in self.metrics() if r.get("epoch", 0) <= epoch]
        if kept or self.metrics_path.exists():
            lines = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.metrics_path, lambda tmp: Path(tmp).write_text(lines))

    def metrics(self) -> list[dict]:
        """The records of metrics.jsonl; a torn or foreign line (a kill during an append) is dropped with a notice."""
        if not self.metrics_path.exists():
            return []
        records, torn = [], 0
        for line in self.metrics_path.read_bytes().decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
                records.append(rec)
            else:
                torn += 1
        if torn and self.is_main:
            _notice(f"dropped {torn} unreadable line(s) of {self.metrics_path} (an interrupted write)")
        return records

    def append_metrics(self, rec: dict) -> None:
        if not self.is_main:
            return
        line = json.dumps(rec, allow_nan=False) + "\n"
        try:
            with open(self.metrics_path, "a") as f:
                f.write(line)
                f.flush()
        except OSError as e:
            raise RunFolderError(f"cannot write {self.metrics_path}: {e.strerror or first_line(e)}") from None

    def write_bad_files(self, bad: list[tuple[str, str]]) -> None:
        """RUN/bad_files.txt: one ``path<TAB>reason`` line per skipped image (names as the filesystem gives them)."""
        if not self.is_main or not bad:
            return
        lines = b"".join(os.fsencode(p) + b"\t" + why.encode("utf-8", "backslashreplace") + b"\n" for p, why in bad)
        atomic_write(self.path / "bad_files.txt", lambda tmp: Path(tmp).write_bytes(lines))

    def save(self, state: dict, encoder: torch.nn.Module, meta: dict[str, str], keep: int = 1, epoch_end: bool = True) -> None:
        """Write the training state and the encoder; at an epoch end with ``keep`` > 1 also keep this
        epoch's checkpoint in RUN/checkpoints/ (the last ``keep`` of them)."""
        if not self.is_main:
            return
        save_checkpoint(state, self.checkpoint)
        if epoch_end and keep > 1:
            # Earlier epochs stay as hard links (no copy) in RUN/checkpoints/, the last K of them.
            folder = self.path / "checkpoints"
            target = folder / f"epoch_{int(state['epoch']):04d}.pt"
            try:
                folder.mkdir(exist_ok=True)
                target.unlink(missing_ok=True)
                try:
                    os.link(self.checkpoint, target)
                except OSError:
                    atomic_write(target, lambda tmp: shutil.copy2(self.checkpoint, tmp))
                for old in self._kept()[keep:]:
                    old.unlink()
            except OSError as e:
                raise RunFolderError(f"cannot keep {target}: {e.strerror or first_line(e)}") from None
        save_encoder(encoder, self.path / "encoder.safetensors", meta)

    def _kept(self) -> list[Path]:
        """The kept epoch checkpoints, newest first."""
        return sorted((self.path / "checkpoints").glob("epoch_*.pt"), reverse=True)

    def load(self, map_location) -> dict:
        """The saved training state: RUN/checkpoint.pt or, when that is damaged or missing, the newest
        intact kept copy (with a notice)."""
        candidates = ([self.checkpoint] if os.path.lexists(self.checkpoint) else []) + self._kept()
        if not candidates:
            raise RunFolderError(f"{self.path} has no checkpoint to resume from")
        first_error = None
        for path in candidates:
            try:
                state = load_checkpoint(path, map_location=map_location)
                _check_state(state, path)
            except ImportedRun:
                raise
            except CheckpointError as e:
                first_error = first_error or e
                continue
            if path != candidates[0]:
                _notice(f"{first_error}; resuming from the newest intact copy, {path} (epoch {state['epoch']})")
            return state
        raise RunFolderError(f"{first_error}; no intact copy is kept (train.keep_checkpoints); start again with --overwrite")


def _make_folders(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; the folders this call created, deepest first. Only a successful
    ``mkdir`` counts: a folder that exists (one made meanwhile by another process, or one that "new/.." names once
    "new" exists) is not ours. Stops at the first it cannot make: ``_check_writable`` says why."""
    made = []
    for p in reversed([p for p in (path, *path.parents) if not os.path.lexists(p)]):
        try:
            os.mkdir(p)
        except FileExistsError:
            continue
        except OSError:
            break
        made.append(p)
    return made[::-1]


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _check_state(state: dict, path: Path) -> None:
    """A training state this run can continue from: its parts present, its counters sane, every tensor finite."""
    if state.get("imported"):
        raise ImportedRun(f"{path} holds weights imported from a {str(state['imported']).split(' checkpoint')[0]} "
                              "checkpoint, not a training state to continue; pretrain into another --out")
    if (not {"model", "optimizer", "epoch", "step"} <= state.keys() or not isinstance(state["model"], dict)
            or not isinstance(state["optimizer"], dict) or not isinstance(state.get("config", {}), dict)
            or not all(isinstance(v, dict) for v in state.get("config", {}).values())):
        raise CheckpointError(f"{path} is not a pretraining checkpoint")
    try:
        epoch, step = int(state["epoch"]), int(state["step"])
    except (TypeError, ValueError):
        raise CheckpointError(f"{path} holds no valid epoch and step") from None
    if epoch < 0 or step < epoch:
        raise CheckpointError(f"{path} holds an impossible position (epoch {epoch}, step {step})")
    bad = nonfinite_tensors(state["model"]) + nonfinite_tensors(state["optimizer"].get("state", {}), "optimizer state ")
    if bad:
        raise CheckpointError(f"{path} holds non-finite values ({bad[0]}); it cannot be continued")


def _show(path: Path) -> str:
    text = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 160 else text[:80] + "..." + text[-40:]


def _notice(text: str) -> None:
    print(f"notice: {text}", file=sys.stderr)
