"""The pretraining loop.

One step: learning rate -> two views of the uint8 batch, drawn on the device -> forward and backward
(plain or gradient-cached) -> non-finite check -> optimiser step. One epoch: the steps, a
metrics.jsonl line, the kNN monitor when due, a checkpoint. The random state of a step is a function
of (seed, step), so a resumed run continues exactly where the saved one stood.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch

from simclr import __version__
from simclr.checkpoint import CheckpointError, encoder_metadata, nonfinite_tensors
from simclr.config import Config, ConfigError, as_saved, config_to_dict
from simclr.data import Batches, ImageSet
from simclr.data.crop import ViewCropper
from simclr.data.augment import SimCLRAugment
from simclr.data.errors import DataError, printable
from simclr.model.simclr import SimCLR
from simclr.optim import (
    build_optimizer,
    scaled_lr,
    set_lr,
    warmup_cosine,
    warmup_steps_for,
)
from simclr.runtime import autocast_for, pick_device, resolve_precision, step_generator
from simclr.train.distributed import (
    DistEnv,
    all_reduce_mean,
    convert_global_bn,
    gather_with_grad,
)
from simclr.train.monitor import KnnMonitor
from simclr.train.progress import epoch_progress
from simclr.train.tensorboard_log import TensorBoardLog
from simclr.train.run_folder import RunFolder
from simclr.train.step import cached_backward, plain_backward

__all__ = ["Trainer", "NonFiniteLoss", "Interrupted", "StepStats", "resume_conflicts"]


class NonFiniteLoss(FloatingPointError):
    """The loss or the weights became NaN or infinite; the run stops and the last good checkpoint is kept."""


class Interrupted(Exception):
    """A stop signal arrived; a checkpoint of the exact position was saved."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def training_input(cfg: Config, train: ImageSet, batch_size: int, rank: int = 0, world_size: int = 1
                   ) -> tuple[SimCLRAugment, Batches]:
    """The augmentation and the batches a run on ``train`` trains with (``simclr views`` shows them too).

    ``cfg`` is resolved; ``batch_size`` is this process's share of the global batch. Large streamed images
    get their two views cut from the full frame by the loader workers (``ViewCropper``); the augmentation's
    ``views(x, step_generator(seed, step, rank, device))`` does the rest on the device.
    """
    augment = SimCLRAugment.from_config(cfg.augment, cfg.data.image_size)
    cropper = ViewCropper(cfg.data.image_size, augment.cfg, train.max_pixels, crops=augment.view_crops()) if train.streamed else None
    batches = Batches(train, batch_size, cfg.train.seed, num_workers=cfg.data.num_workers, rank=rank, world_size=world_size,
                      strict=cfg.data.strict, cropper=cropper)
    return augment, batches


@dataclass
class StepStats:
    """Sums of one epoch's step metrics, kept on the device (no host sync per step)."""

    loss: torch.Tensor
    acc: torch.Tensor
    online_loss: torch.Tensor
    online_acc: torch.Tensor
    n: int = 0
    images: int = 0  # source images of the steps run (this rank), skipped steps included

    @classmethod
    def zeros(cls, device) -> StepStats:
        return cls(*(torch.zeros((), device=device) for _ in range(4)))

    def state(self) -> dict:
        return {"loss": self.loss, "acc": self.acc, "online_loss": self.online_loss, "online_acc": self.online_acc, "n": self.n,
                "images": self.images}

    @classmethod
    def from_state(cls, st: dict, device) -> StepStats:
        return cls(*(st[k].to(device) for k in ("loss", "acc", "online_loss", "online_acc")), n=int(st["n"]),
                   images=int(st.get("images", 0)))

    def add(self, out: dict[str, torch.Tensor]) -> None:
        if out.get("skipped"):
            return
        self.loss += out["contrastive_loss"].float()
        self.acc += out["contrastive_acc"].float()
        if "online_loss" in out:
            self.online_loss += out["online_loss"].float()
            self.online_acc += out["online_acc"].float()
        self.n += 1


class Trainer:
    """Everything a pretraining run needs; ``fit()`` runs it.

    Args:
        cfg: a resolved, validated config (``simclr.config.resolve`` then ``validate``).
        train: the training images; labels, when known, feed the online probe and the kNN monitor.
        val: optional labelled images for the kNN monitor (else leave-one-out on ``train``).
        log: a callable for human-readable lines (the CLI passes print).
        dist_env: this process's place in a torchrun job (default: a single process). With several
            processes the global batch ``train.batch_size`` is split evenly across them, BatchNorm
            statistics and NT-Xent negatives cover the global batch, and only rank 0 writes files.
        model: the SimCLR module to train (default: ``SimCLR.from_config(cfg)`` under ``train.seed``); pass a
            subclass to change a piece of the method (its initialisation is then the caller's).
        folder: the run folder (default: ``RunFolder(train.out)``); ``simclr.train.pretrain`` passes one it has
            acquired (locked and checked).
    """

    def __init__(self, cfg: Config, train: ImageSet, val: ImageSet | None = None, log=print,
                 dist_env: DistEnv | None = None, model: SimCLR | None = None, folder: RunFolder | None = None):
        t, o = cfg.train, cfg.optim
        self.cfg, self.train_set = cfg, train
        self.env = env = dist_env or DistEnv()
        self.log = log if env.is_main else (lambda *_: None)
        if t.batch_size % env.world_size:
            raise ConfigError(f"train.batch_size {t.batch_size} must be divisible by the number of processes ({env.world_size})")
        if t.chunk_size and env.distributed:
            raise ConfigError("train.chunk_size (the gradient-cached step) runs in a single process; under torchrun "
                              "the global batch is already split across devices, so set train.chunk_size 0")
        self.local_batch = t.batch_size // env.world_size
        self.device = pick_device(t.device)
        if self.device.type == "cuda" and env.distributed:
            self.device = torch.device("cuda", env.local_rank)
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.folder = folder if folder is not None else RunFolder(t.out, is_main=env.is_main)
        supervised = cfg.loss.name == "supervised"
        if supervised and not train.has_labels:
            raise DataError(f"loss.name supervised trains with labels, and {printable(cfg.data.path)} has none "
                            "(give a folder with one subfolder of images per class)")
        self.num_classes = len(train.classes) if (train.has_labels and (cfg.monitor.online_linear or supervised)) else 0
        self.model = model if model is not None else SimCLR.from_config(cfg, self.num_classes)
        if env.distributed:
            # the paper's global BN: SyncBatchNorm on CUDA, the lean GlobalBatchNorm on CPU/gloo
            self.model = convert_global_bn(self.model, self.device)
        self.model = self.model.to(self.device, memory_format=torch.channels_last if t.channels_last else torch.preserve_format)
        self.augment, self.batches = training_input(cfg, train, self.local_batch, env.rank, env.world_size)
        if cfg.train.compile:  # the augmentation as one graph too, not hundreds of small kernels a view
            self.augment.compile(dynamic=False)
        self.steps_per_epoch = len(self.batches)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.peak_lr = scaled_lr(o.base_lr, t.batch_size, o.lr_scaling)
        self.warmup_steps = warmup_steps_for(o.warmup_epochs, self.steps_per_epoch, self.total_steps, o.warmup_max_fraction)
        trained = [self.model.encoder, self.model.head] + ([self.model.online] if supervised else [])
        self.optimizer = build_optimizer(o.name, torch.nn.ModuleList(trained), self.peak_lr, o.weight_decay, o.momentum, o.eta)
        if self.model.online is not None and not supervised:
            # The online probe only monitors: plain momentum SGD at a tenth of the rate (the usual
            # linear-probe lr of 0.1 x B/256 at the CIFAR base rate), no decay, no LARS adaptation,
            # so that it keeps up in short runs. Its gradients never reach the encoder.
            self.optimizer.add_param_group(
                dict(params=list(self.model.online.parameters()), weight_decay=0.0, lars_exclude=True, lr_mult=0.1))
        self.autocast, self.precision = autocast_for(self.device, t.precision)
        if t.precision == "auto":
            self.log(f"precision {self.precision} ({resolve_precision(self.device, t.precision)[1]})")
        # Disabled unless fp16: then scale() is the identity and step() a plain optimiser step.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.forward_backward = self._backward_path()
        # BN running statistics as they were before the step: a skipped (non-finite) step leaves no trace in them
        self._bn_buffers = [b for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        self._bn_saved = [torch.empty_like(b) for b in self._bn_buffers] if t.skip_nonfinite else []
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes every step: pick the fastest convolutions once
        self.monitor = KnnMonitor(cfg, train, val, self.device, t.epochs)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps completed
        self.skipped = 0  # steps skipped for a non-finite loss (train.skip_nonfinite)
        self.stop_requested = self.save_due = False  # set by every step, the same on every rank
        self.tb: TensorBoardLog | None = None  # train.tensorboard, on the main process, during fit()
        self.stats: StepStats | None = None  # the running epoch's sums (saved mid-epoch on a signal)
        self._signal: int | None = None
        self._saved_epoch = 0
        self._saved_at = time.monotonic()

    def _backward_path(self):
        """The plain step (DDP-wrapped and compiled as configured), or the gradient-cached one."""
        t = self.cfg.train
        if t.chunk_size and t.chunk_size < self.local_batch:
            return functools.partial(cached_backward, self.model, chunk=t.chunk_size, autocast=self.autocast, scale=self.scaler.scale)
        net = self.model
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # Global BN keeps the running statistics equal on every rank: no buffer broadcast needed.
            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                       else "broadcast_buffers")  # renamed in recent PyTorch
            net = DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None, **{no_sync: False})
        net = torch.compile(net) if t.compile else net
        gather = gather_with_grad if self.env.distributed else None
        return functools.partial(plain_backward, net, autocast=self.autocast, scale=self.scaler.scale, gather=gather,
                                 rank=self.env.rank)

    # -- one step ---------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on uint8 images x (B, 3, H, W), or their two crops (B, 2, 3, S, S) cut by
        the loader, and labels y (B,)."""
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.peak_lr)
        set_lr(self.optimizer, lr)
        x = x.to(self.device, non_blocking=True)
        g = step_generator(self.cfg.train.seed, self.step, self.env.rank, self.device)
        v1, v2 = (self._layout(v) for v in self.augment.views(x, g))
        if self.tb is not None and self.step == 0:
            self.tb.views(v1, v2)
        labels = y.to(self.device, non_blocking=True) if self.num_classes else None
        self.optimizer.zero_grad(set_to_none=True)
        if self._bn_saved:
            torch._foreach_copy_(self._bn_saved, self._bn_buffers)
        out = self.forward_backward(v1, v2, labels)
        out["lr"] = torch.tensor(lr)
        # One host sync per step, the price of never applying a NaN update; under torchrun the same single
        # collective also agrees on stopping (a signal on any rank) and on a due mid-epoch checkpoint.
        nonfinite, self.stop_requested, self.save_due = self._agree(
            ~torch.isfinite(out["loss"]).all(), self._signal is not None, self._checkpoint_due())
        if nonfinite:
            return self._skip_or_stop(out)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return out

    def _layout(self, v: torch.Tensor) -> torch.Tensor:
        return v.contiguous(memory_format=torch.channels_last) if self.cfg.train.channels_last else v

    def _agree(self, *flags: bool | torch.Tensor) -> list[bool]:
        """Each flag (a bool, or a 0-d bool tensor on the device) OR-ed over all ranks, in one collective and
        one host read (every rank must take the same branch)."""
        if not self.env.distributed:
            return [bool(f) for f in flags]
        import torch.distributed as dist

        # Filled on the device: torch.tensor(host list, device=...) would add a blocking copy.
        t = torch.zeros(len(flags), device=self.device)
        for i, f in enumerate(flags):
            if isinstance(f, torch.Tensor):
                t[i] = f
            elif f:
                t[i] = 1.0
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [v > 0 for v in t.tolist()]

    def _checkpoint_due(self) -> bool:
        minutes = self.cfg.train.checkpoint_minutes
        return bool(minutes) and time.monotonic() - self._saved_at >= 60 * minutes

    def _skip_or_stop(self, out: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        if not self.cfg.train.skip_nonfinite:
            raise NonFiniteLoss(
                f"the loss became non-finite at step {self.step + 1} (epoch {self.epoch + 1}); stopped, and the last good "
                f"checkpoint (epoch {self.epoch}) is kept. Lower optim.base_lr, use train.precision fp32, or set "
                "train.skip_nonfinite true to skip such steps")
        if self._bn_saved:  # the forward of a skipped step updated them: undo
            torch._foreach_copy_(self._bn_buffers, self._bn_saved)
        self.skipped += 1
        self.step += 1
        out["skipped"] = True
        return out

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "simclr-checkpoint-v1",
            "simclr_version": __version__,
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "skipped": self.skipped,
            "partial": self.stats.state() if (self.stats is not None and self.stats.n) else {},
            "num_classes": self.num_classes,
            "classes": list(self.train_set.classes),
            "num_images": len(self.train_set),
            "data_fingerprint": data_fingerprint(self.train_set),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state; refuses (CheckpointError, one line) a state this run cannot continue
        exactly: other settings than the run's own, or other training data."""
        conflicts = resume_conflicts(state.get("config", {}), config_to_dict(self.cfg))
        saved_n = state.get("num_images")
        if saved_n is not None and int(saved_n) != len(self.train_set):
            conflicts.insert(0, f"the run trained on {saved_n} images, {self.cfg.data.path} now has {len(self.train_set)}")
        elif state.get("data_fingerprint") not in (None, data_fingerprint(self.train_set)):
            conflicts.insert(0, f"{self.cfg.data.path} holds other images (names or labels) than the run trained on")
        if conflicts:
            more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise CheckpointError(f"cannot resume {self.folder.path}: {conflicts[0]}{more}; resume with the run's own settings "
                                  f"({self.folder.path / 'config.yaml'}), or start a new run with --overwrite or another --out")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"the checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._saved_epoch = self.epoch
        saved_epochs = int(state.get("config", {}).get("train", {}).get("epochs", self.cfg.train.epochs))
        if saved_epochs != self.cfg.train.epochs and self.epoch < self.cfg.train.epochs:
            self.log(f"notice: train.epochs changed from {saved_epochs} to {self.cfg.train.epochs}: the learning-rate "
                     "schedule follows the new length from here on")
        self.skipped = int(state.get("skipped", 0))
        partial = state.get("partial") or {}
        self.stats = StepStats.from_state(partial, self.device) if partial else None

    def save(self, epoch_end: bool = True) -> None:
        """Checkpoint the exact position (and the encoder); refuses to overwrite good weights with non-finite ones."""
        state = self.state_dict()
        bad = nonfinite_tensors(state["model"]) + nonfinite_tensors(state["optimizer"]["state"], "optimizer state ")
        if bad:
            raise NonFiniteLoss(f"{len(bad)} tensor(s) became non-finite (e.g. {bad[0]}) by step {self.step}; stopped, and "
                                f"the last good checkpoint (epoch {self._saved_epoch}) is kept. Lower optim.base_lr or use "
                                "train.precision fp32")
        meta = encoder_metadata(self.model.encoder, self.cfg.data.image_size, self.epoch)
        self.folder.save(state, self.model.encoder, meta, self.cfg.train.keep_checkpoints, epoch_end)
        self._saved_epoch, self._saved_at = self.epoch, time.monotonic()

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train from the current epoch to ``train.epochs``; returns the metrics of the new epochs.

        SIGINT, SIGTERM and SIGHUP finish the step in flight, save the exact position and raise
        ``Interrupted``; a second SIGINT aborts at once.
        """
        self.folder.start(self.cfg, self.epoch)
        self._saved_at = time.monotonic()
        self.folder.write_bad_files(self.train_set.bad)
        if self.train_set.bad:
            print(f"warning: skipped {len(self.train_set.bad)} unreadable image file(s); they are listed in "
                  f"{self.folder.path / 'bad_files.txt'} (use --strict to stop at the first)", file=sys.stderr)
        self.model.train()
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        if self.cfg.train.tensorboard and self.env.is_main:
            self.tb = TensorBoardLog(self.folder.path / "tb", self.cfg.train.tensorboard_every, start_step=self.step)
        try:
            return [self._epoch(epoch) for epoch in range(self.epoch, self.cfg.train.epochs)]
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if self.tb is not None:
                self.tb.close()
                self.tb = None

    def _on_signal(self, signum, frame) -> None:
        if self._signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        self._signal = signum

    def _epoch(self, epoch: int) -> dict:
        t = self.cfg.train
        start_step = self.step - epoch * self.steps_per_epoch  # > 0 when resuming mid-epoch
        if not (start_step > 0 and self.stats is not None):
            self.stats = StepStats.zeros(self.device)
        bar = epoch_progress(self.steps_per_epoch, start_step, f"epoch {epoch + 1}/{t.epochs}", t.progress and self.env.is_main,
                             t.log_every)
        start, steps, known_bad = time.perf_counter(), 0, len(self.train_set.bad)
        bad_at_start = known_bad
        for x, y, idx in self.batches.epoch(epoch, start_step):
            out = self.train_step(x, y)
            self.stats.add(out)
            self.stats.images += len(idx)
            steps += 1
            stop, due = self.stop_requested, self.save_due  # agreed by every rank within the step
            if stop or due:  # the exact position, mid-epoch: a signal, or train.checkpoint_minutes elapsed
                self.save(epoch_end=False)
            if stop:
                self._stopped(epoch)
            if len(self.train_set.bad) > known_bad:  # streamed files that broke during the epoch
                known_bad = len(self.train_set.bad)
                self.folder.write_bad_files(self.train_set.bad)
            if self.tb is not None and self.tb.due(self.step):
                self.tb.step(self.step, out)
            if bar is not None:  # figures every 10 steps (.item() waits for the device), or for a log line about to print
                if self.step % 10 == 0 or getattr(bar, "prints_next", False):
                    bar.set_postfix(loss=f"{out['contrastive_loss'].item():.3f}", lr=f"{out['lr'].item():.3g}")
                bar.update(1)
        new_bad = len(self.train_set.bad) - bad_at_start
        if new_bad and self.env.is_main:
            print(f"warning: {new_bad} image file(s) could not be read during epoch {epoch + 1} and were replaced; they are "
                  f"listed in {self.folder.path / 'bad_files.txt'}", file=sys.stderr)
        rec = self._epoch_record(epoch, steps, time.perf_counter() - start)
        if bar is not None:
            bar.close()
        # Every rank computes the monitor (only rank 0 records it): a rank idling while rank 0
        # works would sit in its next collective and could hit the distributed timeout.
        if self.monitor.due(self.epoch):
            k0 = time.perf_counter()
            rec.update(self.monitor(self.model.encoder))
            rec["knn_time"] = time.perf_counter() - k0
        self.folder.append_metrics(rec)
        self.log(_format(rec))
        if self.epoch % t.checkpoint_every == 0 or self.epoch == t.epochs:
            self.save()
        if self.tb is not None:  # after the checkpoint: TensorBoard never stands between a run and its weights
            self.tb.epoch(rec)
            if self.epoch == t.epochs:
                self.tb.projector(self.model.encoder, self.train_set, self.cfg.data.image_size, self.device, self.epoch)
        return rec

    def _epoch_record(self, epoch: int, steps: int, elapsed: float) -> dict:
        s = self.stats
        loss = all_reduce_mean(s.loss / max(1, s.n)).item()  # the one host sync of the epoch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if not math.isfinite(loss) or s.n == 0:  # every step was skipped
            raise NonFiniteLoss(f"no finite loss in epoch {epoch + 1}; the last good checkpoint is kept")
        self.epoch, self.stats = epoch + 1, None
        rec = {"epoch": self.epoch, "step": self.step, "loss": loss, "contrastive_acc": all_reduce_mean(s.acc / s.n).item(),
               "lr": warmup_cosine(self.step - 1, self.total_steps, self.warmup_steps, self.peak_lr),
               "epoch_time": elapsed, "images_per_sec": steps * self.cfg.train.batch_size / max(elapsed, 1e-9),
               "images": s.images * self.env.world_size}  # every rank takes the same number of images per step
        if self.skipped:
            rec["skipped_steps"] = self.skipped
        if self.num_classes:
            rec["online_loss"] = all_reduce_mean(s.online_loss / s.n).item()
            rec["online_acc"] = all_reduce_mean(s.online_acc / s.n).item()
        return rec

    def _stopped(self, epoch: int):
        signum = self._signal or signal.SIGTERM
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name} at epoch {epoch + 1}, step {self.step}; "
                                  f"checkpoint saved in {self.folder.path}; continue with --resume")


# Keys that may differ when a run is resumed: where it runs and how it reports, not what it computes.
RESUMABLE_CHANGES = {
    "train": {"epochs", "resume", "overwrite", "out", "device", "progress", "log_every", "tensorboard", "tensorboard_every", "threads", "keep_checkpoints", "checkpoint_every",
              "checkpoint_minutes", "dist_timeout", "compile"},
    "data": {"path", "data_dir", "val_path", "num_workers", "strict"},
    "monitor": {"knn_every", "knn_k", "knn_temperature", "knn_max_images"},
}


def data_fingerprint(ds: ImageSet) -> str:
    """A digest of what a dataset is, independent of where it lies: each image's name relative to its class
    folder (or its index for built-in sets) and its label. A moved data folder keeps it; another one does not."""
    import hashlib

    h = hashlib.sha256()
    if ds.paths is not None:
        names = [os.path.join(*os.fsencode(p).split(b"/")[-2:]) for p in ds.paths]
    elif ds.shards is not None:  # SHARD-FILE#KEY: shards moved elsewhere keep their fingerprint
        names = ds.shards.names(folder=False)
    else:
        names = ds.names("")
    for name, label in zip(names, ds.labels.tolist()):
        h.update(os.fsencode(name) + b"\0" + str(label).encode() + b"\n")
    h.update(("|".join(ds.classes)).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def resume_conflicts(saved: dict, current: dict) -> list[str]:
    """The settings of ``current`` (a config dict) that differ from the run's ``saved`` ones and would change
    what the resumed run computes, as readable lines."""
    out = []
    saved = as_saved(saved)  # keys the run predates hold the values it ran with
    for section, keys in current.items():
        for name, value in keys.items():
            if name in RESUMABLE_CHANGES.get(section, ()) or name not in saved.get(section, {}):
                continue
            before = saved[section][name]
            if isinstance(value, (list, tuple)):
                value, before = list(value), list(before) if isinstance(before, (list, tuple)) else before
            if before != value:
                out.append(f"{section}.{name} was {before!r}, this command has {value!r}")
    return out


def _format(rec: dict) -> str:
    parts = [f"epoch {rec['epoch']}", f"loss {rec['loss']:.4f}", f"acc {rec['contrastive_acc']:.3f}", f"lr {rec['lr']:.4g}",
             f"{rec['images_per_sec']:.0f} img/s"]
    if "online_acc" in rec:
        parts.append(f"online {rec['online_acc']:.3f}")
    if "knn_top1" in rec:
        parts.append(f"knn {rec['knn_top1']:.3f}")
    return "  ".join(parts)
