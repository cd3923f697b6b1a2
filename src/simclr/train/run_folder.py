"""A pretraining run's folder and everything written into it.

    RUN/config.yaml          the resolved config
    RUN/metrics.jsonl        one JSON line per epoch
    RUN/checkpoint.pt        the full training state (atomic; weights only, no pickled code)
    RUN/encoder.safetensors  the encoder alone, torchvision names
    RUN/checkpoints/         the last K epoch checkpoints (train.keep_checkpoints > 1)
    RUN/bad_files.txt        images that were skipped, with the reason

Only the main process of a distributed job writes (``is_main``); the others get a folder object whose
writes do nothing, so the trainer never asks who it is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

from simclr.checkpoint import load_checkpoint, save_checkpoint, save_encoder
from simclr.config import save_config

__all__ = ["RunFolder"]


class RunFolder:
    """Housekeeping of one run folder (see the module docstring)."""

    def __init__(self, path: str | Path, is_main: bool = True):
        self.path = Path(path)
        self.is_main = is_main

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def start(self, cfg, epoch: int) -> None:
        """Create the folder, write the config and keep only the metrics of epochs up to ``epoch``
        (the state being resumed; 0 for a new run)."""
        if not self.is_main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        stale = list(self.path.glob(".*.tmp")) + list(self.path.glob("checkpoints/.*.tmp"))
        for tmp in stale:  # half-written files of a killed save; the files they were meant to replace are intact
            tmp.unlink(missing_ok=True)
        if stale:
            print(f"notice: removed {len(stale)} unfinished temporary file(s) of an interrupted save in {self.path}", file=sys.stderr)
        save_config(cfg, self.path / "config.yaml")
        kept = [r for r in self.metrics() if r.get("epoch", 0) <= epoch]
        if kept or self.metrics_path.exists():
            text = "".join(json.dumps(r) + "\n" for r in kept)
            self.metrics_path.write_text(text)

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
            print(f"notice: dropped {torn} unreadable line(s) of {self.metrics_path} (an interrupted write)", file=sys.stderr)
        return records

    def append_metrics(self, rec: dict) -> None:
        if self.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec, allow_nan=False) + "\n")

    def write_bad_files(self, bad: list[tuple[str, str]]) -> None:
        """RUN/bad_files.txt: one ``path<TAB>reason`` line per skipped image (names as the filesystem gives them)."""
        if not self.is_main or not bad:
            return
        lines = b"".join(os.fsencode(p) + b"\t" + why.encode("utf-8", "backslashreplace") + b"\n" for p, why in bad)
        (self.path / "bad_files.txt").write_bytes(lines)

    def save(self, state: dict, encoder: torch.nn.Module, meta: dict[str, str], keep: int = 1, epoch_end: bool = True) -> None:
        """Write the training state and the encoder; at an epoch end with ``keep`` > 1 also keep this
        epoch's checkpoint in RUN/checkpoints/ (the last ``keep`` of them)."""
        if not self.is_main:
            return
        save_checkpoint(state, self.checkpoint)
        if epoch_end and keep > 1:
            # Earlier epochs stay as hard links (no copy) in RUN/checkpoints/, the last K of them.
            folder = self.path / "checkpoints"
            folder.mkdir(exist_ok=True)
            target = folder / f"epoch_{int(state['epoch']):04d}.pt"
            target.unlink(missing_ok=True)
            try:
                os.link(self.checkpoint, target)
            except OSError:
                shutil.copy2(self.checkpoint, target)
            for old in sorted(folder.glob("epoch_*.pt"))[:-keep]:
                old.unlink()
        save_encoder(encoder, self.path / "encoder.safetensors", meta)

    def load(self, map_location) -> dict:
        """The saved training state."""
        return load_checkpoint(self.checkpoint, map_location=map_location)
