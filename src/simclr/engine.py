"""The pretraining loop.

One step: slice a uint8 batch -> move it to the device -> two independent augmentations there ->
encoder + head on the 2N views -> NT-Xent (+ online probe) -> backward -> optimiser with the
per-step learning rate. Per epoch: a metrics.jsonl line, a checkpoint of the full state and the
encoder's weights. The random state of a step is a function of (seed, step), so a resumed run
continues exactly where the saved one stood.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from simclr.augment import SimCLRAugment
from simclr.builder import SimCLR, build_simclr
from simclr.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, save_encoder
from simclr.config import Config, ConfigError, config_to_dict, resolve, save_config, validate
from simclr.data import Batches, ImageSet, load_dataset
from simclr.distributed import DistEnv, all_reduce_mean, convert_global_bn, gather_with_grad, init_distributed, shutdown
from simclr.eval import extract_features, knn_accuracy
from simclr.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine, warmup_steps_for

__all__ = ["pick_device", "build_augment", "build_model", "Trainer", "pretrain", "load_data", "chunked_backward"]


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint of the exact position was saved."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is cuda but no CUDA GPU is available; use --device cpu")
    return dev


def autocast_for(device: torch.device, precision: str):
    """Mixed precision context: bf16 on CUDA by default, fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


def build_augment(cfg: Config) -> SimCLRAugment:
    a = cfg.augment
    return SimCLRAugment(
        image_size=cfg.data.image_size,
        crop=a.crop,
        crop_scale=tuple(a.crop_scale),
        crop_ratio=tuple(a.crop_ratio),
        flip_p=a.flip_p if a.flip else 0.0,
        color_strength=a.color_strength if a.color else 0.0,
        color_p=a.color_p if a.color else 0.0,
        gray_p=a.gray_p if a.grayscale else 0.0,
        blur_p=a.blur_p if a.blur else 0.0,
        blur_sigma=tuple(a.blur_sigma),
        blur_kernel_frac=a.blur_kernel_frac,
    )


def build_model(cfg: Config, num_classes: int = 0) -> SimCLR:
    m, h = cfg.model, cfg.head
    return build_simclr(
        m.arch, m.width, bool(m.cifar_stem), h.num_layers, h.hidden_dim, h.out_dim, h.bn,
        float(cfg.loss.temperature), num_classes, m.zero_init_residual,
    )


def load_data(spec: str, cfg: Config) -> ImageSet:
    d = cfg.data
    return load_dataset(spec, d.image_size, d.data_dir, d.max_per_class, d.in_memory_max_side, d.synthetic_train, d.synthetic_test,
                        d.strict, d.max_pixels)


def _f32(t: torch.Tensor) -> torch.Tensor:
    """Up-cast half precision to float32; leave float32/float64 as they are."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def chunked_backward(model: SimCLR, x1: torch.Tensor, x2: torch.Tensor, labels: torch.Tensor | None, chunk: int,
                     autocast=None, scale=None) -> dict[str, torch.Tensor]:
    """Gradient-cached SimCLR step (Gao et al., 2021): the loss of the whole batch, the memory of a chunk.

    1. Embed the batch chunk by chunk without autograd graphs (BN running statistics frozen, so they
       are updated once, in step 3).
    2. NT-Xent over the full batch of projections; back-propagate to the projections only.
    3. Re-run each chunk with its graph and back-propagate the cached projection gradients.

    The parameter gradients equal those of the plain step when the model has no batch statistics;
    with BatchNorm in training mode each chunk is normalised with its own statistics. Returns the
    same dict as ``SimCLR.forward`` (``loss`` detached: gradients are already accumulated).
    ``scale`` multiplies what is back-propagated (a GradScaler's ``scale``), ``autocast`` is a context.
    """
    autocast = autocast or contextlib.nullcontext()
    n = x1.shape[0]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        with torch.no_grad(), autocast:
            zs = [_f32(model.head(model.encoder(torch.cat((x1[i : i + chunk], x2[i : i + chunk]))))) for i in range(0, n, chunk)]
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
    z1 = torch.cat([z[: len(z) // 2] for z in zs]).requires_grad_()
    z2 = torch.cat([z[len(z) // 2 :] for z in zs]).requires_grad_()
    loss, acc = model.contrastive(z1, z2)
    (loss if scale is None else scale(loss)).backward()
    out = {"contrastive_loss": loss.detach(), "contrastive_acc": acc}
    online_loss = torch.zeros((), device=x1.device, dtype=z1.dtype)
    online_acc = torch.zeros((), device=x1.device, dtype=z1.dtype)
    for i in range(0, n, chunk):
        with autocast:
            h = model.encoder(torch.cat((x1[i : i + chunk], x2[i : i + chunk])))
            z = _f32(model.head(h))
        c = z.shape[0] // 2
        total = (z[:c] * z1.grad[i : i + c]).sum() + (z[c:] * z2.grad[i : i + c]).sum()
        if model.online is not None and labels is not None:
            logits = model.online(_f32(h.detach()))
            y = labels[i : i + c].repeat(2)
            ce = torch.nn.functional.cross_entropy(logits, y) * (c / n)
            total = total + ce
            online_loss += ce.detach()
            online_acc += (logits.argmax(1) == y).float().sum().detach() / (2 * n)
        (total if scale is None else scale(total)).backward()
    if model.online is not None and labels is not None:
        out.update(online_loss=online_loss, online_acc=online_acc)
    out["loss"] = (loss.detach() + online_loss)
    return out


@dataclass
class StepStats:
    loss: torch.Tensor
    acc: torch.Tensor
    online_loss: torch.Tensor
    online_acc: torch.Tensor
    n: int = 0

    @classmethod
    def zeros(cls, device) -> "StepStats":
        z = lambda: torch.zeros((), device=device)  # noqa: E731
        return cls(z(), z(), z(), z())

    def state(self) -> dict:
        return {"loss": self.loss, "acc": self.acc, "online_loss": self.online_loss, "online_acc": self.online_acc, "n": self.n}

    @classmethod
    def from_state(cls, st: dict, device) -> "StepStats":
        return cls(*(st[k].to(device) for k in ("loss", "acc", "online_loss", "online_acc")), n=int(st["n"]))

    def add(self, out: dict[str, torch.Tensor]) -> None:
        if out.get("skipped"):
            return
        # Accumulated on the device: no host sync per step.
        self.loss += out["contrastive_loss"].float()
        self.acc += out["contrastive_acc"].float()
        if "online_loss" in out:
            self.online_loss += out["online_loss"].float()
            self.online_acc += out["online_acc"].float()
        self.n += 1


class Trainer:
    """Holds everything a pretraining run needs; ``fit()`` runs it.

    Args:
        cfg: a resolved, validated config (``resolve`` then ``validate``).
        train: the training images; labels, when known, feed the online probe and the kNN monitor.
        val: optional labelled images for the kNN monitor (else leave-one-out on ``train``).
        log: a callable for human-readable lines (the CLI passes print).
        dist_env: this process's place in a torchrun job (default: a single process). With several
            processes the global batch ``train.batch_size`` is split evenly across them, BatchNorm
            statistics and NT-Xent negatives cover the global batch, and only rank 0 writes files.
    """

    def __init__(self, cfg: Config, train: ImageSet, val: ImageSet | None = None, log=print, dist_env: DistEnv | None = None):
        self.cfg, self.train_set, self.val_set = cfg, train, val
        t = cfg.train
        self.env = dist_env or DistEnv()
        self.log = log if self.env.is_main else (lambda *_: None)
        if t.batch_size % self.env.world_size:
            raise ConfigError(f"train.batch_size {t.batch_size} must be divisible by the number of processes ({self.env.world_size})")
        self.local_batch = t.batch_size // self.env.world_size
        if t.chunk_size and self.env.distributed:
            raise ConfigError("train.chunk_size (the gradient-cached step) runs in a single process; under torchrun "
                              "the global batch is already split across devices, so set train.chunk_size 0")
        self.device = pick_device(t.device)
        if self.device.type == "cuda" and self.env.distributed:
            self.device = torch.device("cuda", self.env.local_rank)
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.out = Path(t.out)
        self.num_classes = len(train.classes) if (train.has_labels and cfg.monitor.online_linear) else 0
        self.model = build_model(cfg, self.num_classes)
        if self.env.distributed:
            self.model = convert_global_bn(self.model)  # the paper's global BN: statistics over all devices
        self.model = self.model.to(self.device)
        if t.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.augment = build_augment(cfg)
        self.batches = Batches(train, self.local_batch, t.seed, cfg.data.num_workers, rank=self.env.rank, world_size=self.env.world_size)
        self.steps_per_epoch = len(self.batches)
        self.total_steps = self.steps_per_epoch * t.epochs
        o = cfg.optim
        self.peak_lr = scaled_lr(float(o.base_lr), t.batch_size, o.lr_scaling)
        self.warmup_steps = warmup_steps_for(o.warmup_epochs, self.steps_per_epoch, self.total_steps, o.warmup_max_fraction)
        trunk = torch.nn.ModuleList([self.model.encoder, self.model.head])
        self.optimizer = build_optimizer(o.name, trunk, self.peak_lr, float(o.weight_decay), o.momentum, o.eta)
        if self.model.online is not None:
            # The online probe only monitors: plain momentum SGD at a tenth of the rate (the usual
            # linear-probe lr of 0.1 x B/256 at the CIFAR base rate), no decay, no LARS adaptation,
            # so that it keeps up in short runs. Its gradients never reach the encoder.
            self.optimizer.add_param_group(
                dict(params=list(self.model.online.parameters()), weight_decay=0.0, lars_exclude=True, lr_mult=0.1)
            )
        self.autocast, self.precision = autocast_for(self.device, t.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        net = self.model
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # Global BN keeps the running statistics equal on every rank: no buffer broadcast needed.
            import inspect

            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                       else "broadcast_buffers")  # renamed in recent PyTorch
            net = DDP(net, device_ids=ids, **{no_sync: False})
        self.forward = torch.compile(net) if t.compile else net
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps completed
        self.skipped = 0  # steps skipped for a non-finite loss (train.skip_nonfinite)
        self.stats: StepStats | None = None  # the running epoch's sums (saved mid-epoch on a signal)

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "simclr-checkpoint-v1",
            "config": config_to_dict(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "epoch": self.epoch,
            "step": self.step,
            "skipped": self.skipped,
            "partial": self.stats.state() if (self.stats is not None and self.stats.n) else {},
            "num_classes": self.num_classes,
            "classes": list(self.train_set.classes),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("config", {}).get("model", {})
        mine = config_to_dict(self.cfg)["model"]
        for key in ("arch", "width", "cifar_stem"):
            if saved.get(key) != mine.get(key):
                raise CheckpointError(
                    f"the checkpoint was trained with model.{key}={saved.get(key)!r}, this run has {mine.get(key)!r}; "
                    "resume with the same model settings or start a new --out folder"
                )
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"the checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.skipped = int(state.get("skipped", 0))
        partial = state.get("partial") or {}
        self.stats = StepStats.from_state(partial, self.device) if partial else None

    def save(self, epoch_end: bool = True) -> None:
        if not self.env.is_main:
            return
        save_checkpoint(self.state_dict(), self.out / "checkpoint.pt")
        keep = self.cfg.train.keep_checkpoints
        if epoch_end and keep > 1:
            # Earlier epochs stay as hard links (no copy) in RUN/checkpoints/, the last K of them.
            folder = self.out / "checkpoints"
            folder.mkdir(exist_ok=True)
            target = folder / f"epoch_{self.epoch:04d}.pt"
            if target.exists():
                target.unlink()
            try:
                os.link(self.out / "checkpoint.pt", target)
            except OSError:
                shutil.copy2(self.out / "checkpoint.pt", target)
            for old in sorted(folder.glob("epoch_*.pt"))[:-keep]:
                old.unlink()
        meta = {"arch": self.cfg.model.arch, "width": str(self.cfg.model.width), "cifar_stem": str(self.cfg.model.cifar_stem),
                "image_size": str(self.cfg.data.image_size), "epoch": str(self.epoch)}
        save_encoder(self.model.encoder, self.out / "encoder.safetensors", meta)

    # -- one step ---------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        # Seeded by the global step so that resuming reproduces the augmentations exactly.
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.train.seed * 1_000_003 + self.step + 7) * 131 + self.env.rank)
        return g

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on uint8 images x (B, 3, H, W) and labels y (B,)."""
        lr = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.peak_lr)
        set_lr(self.optimizer, lr)
        x = x.to(self.device, non_blocking=True)
        g = self._generator()
        v1, v2 = self.augment(x, g), self.augment(x, g)
        if self.cfg.train.channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        labels = y.to(self.device, non_blocking=True) if self.num_classes else None
        chunk = self.cfg.train.chunk_size
        if chunk and chunk < self.local_batch:
            self.optimizer.zero_grad(set_to_none=True)
            scale = self.scaler.scale if self.scaler else None
            out = chunked_backward(self.model, v1, v2, labels, chunk, self.autocast, scale)
            if self._nonfinite(out["contrastive_loss"]):
                return self._skip_or_stop(out, lr)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.step += 1
            out["lr"] = torch.tensor(lr)
            return out
        gather = gather_with_grad if self.env.distributed else None
        with self.autocast:
            out = self.forward(v1, v2, labels, gather=gather, rank=self.env.rank)
        self.optimizer.zero_grad(set_to_none=True)
        if self._nonfinite(out["loss"]):
            return self._skip_or_stop(out, lr)
        if self.scaler:
            self.scaler.scale(out["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            out["loss"].backward()
            self.optimizer.step()
        self.step += 1
        out["lr"] = torch.tensor(lr)
        return out

    def _any_rank(self, flag: bool) -> bool:
        """True when ``flag`` holds on any rank (every rank must take the same branch)."""
        if not self.env.distributed:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _nonfinite(self, loss: torch.Tensor) -> bool:
        # One host sync per step: the price of never applying a NaN update.
        return self._any_rank(not bool(torch.isfinite(loss.detach()).all()))

    def _skip_or_stop(self, out: dict, lr: float) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        if not self.cfg.train.skip_nonfinite:
            raise NonFiniteLoss(
                f"the loss became non-finite at step {self.step + 1} (epoch {self.epoch + 1}); stopped, and the last good "
                f"checkpoint (epoch {self.epoch}) is kept. Lower optim.base_lr, use train.precision fp32, or set "
                "train.skip_nonfinite true to skip such steps"
            )
        self.skipped += 1
        self.step += 1
        out["skipped"] = True
        out["lr"] = torch.tensor(lr)
        return out

    # -- monitoring -------------------------------------------------------------------------
    def knn_monitor(self) -> dict[str, float]:
        mon, size = self.cfg.monitor, self.cfg.data.image_size
        bank = self.train_set
        if len(bank) > mon.knn_max_images:
            g = torch.Generator().manual_seed(0)
            bank = bank.subset(torch.randperm(len(bank), generator=g)[: mon.knn_max_images].sort().values)
        enc = self.model.encoder
        feats = extract_features(enc, bank.get, len(bank), size, self.device, channels_last=self.cfg.train.channels_last)
        if self.val_set is not None and self.val_set.has_labels:
            vf = extract_features(enc, self.val_set.get, len(self.val_set), size, self.device, channels_last=self.cfg.train.channels_last)
            res = knn_accuracy(feats, bank.labels, vf, self.val_set.labels, len(bank.classes), mon.knn_k, mon.knn_temperature)
        else:
            res = knn_accuracy(feats, bank.labels, None, None, len(bank.classes), mon.knn_k, mon.knn_temperature)
        return {"knn_top1": res["top1"], "knn_top5": res["top5"]}

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train from the current epoch to ``train.epochs``; returns the metrics of the new epochs."""
        cfg, t = self.cfg, self.cfg.train
        main = self.env.is_main
        metrics_path = self.out / "metrics.jsonl"
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
            if self.train_set.bad:
                (self.out / "bad_files.txt").write_text("".join(f"{p}\t{why}\n" for p, why in self.train_set.bad))
                import sys

                print(f"warning: skipped {len(self.train_set.bad)} unreadable image file(s); they are listed in "
                      f"{self.out / 'bad_files.txt'} (use --strict to stop at the first)", file=sys.stderr)
            if self.epoch == 0 and metrics_path.exists():
                metrics_path.unlink()
            elif metrics_path.exists():  # drop lines of epochs after the checkpoint (a crash after logging)
                lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= self.epoch]
                metrics_path.write_text("".join(ln + "\n" for ln in lines))
        history = []
        self.model.train()
        bs = t.batch_size
        caught: dict[str, int | None] = {"signum": None}
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum, frame):  # finish the step in flight, then save and stop
                caught["signum"] = signum

            handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._epochs(history, caught, metrics_path, bs, main)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    def _epochs(self, history, caught, metrics_path, bs, main) -> list[dict]:
        cfg, t = self.cfg, self.cfg.train
        for epoch in range(self.epoch, t.epochs):
            start_step = self.step - epoch * self.steps_per_epoch  # > 0 when resuming mid-epoch
            stats = self.stats if (start_step > 0 and self.stats is not None) else StepStats.zeros(self.device)
            self.stats = stats
            bar = _progress(self.steps_per_epoch, f"epoch {epoch + 1}/{t.epochs}", t.progress and main)
            if bar is not None and start_step:
                bar.update(start_step)
            start = time.perf_counter()
            session_steps = 0
            for i, (x, y, _) in enumerate(self.batches.epoch(epoch, start_step), start=start_step):
                out = self.train_step(x, y)
                stats.add(out)
                session_steps += 1
                if self._any_rank(caught["signum"] is not None):
                    self.save(epoch_end=False)
                    signum = caught["signum"] or signal.SIGTERM
                    raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name} at epoch {epoch + 1}, step "
                                              f"{self.step}; checkpoint saved in {self.out}; continue with --resume")
                if bar is not None:
                    bar.update(1)
                    if i % 10 == 0 or i == self.steps_per_epoch - 1:
                        bar.set_postfix(loss=f"{out['contrastive_loss'].item():.3f}", lr=f"{out['lr'].item():.3g}")
            loss = all_reduce_mean(stats.loss / max(1, stats.n)).item()  # the one host sync of the epoch
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - start
            if bar is not None:
                bar.close()
            if not math.isfinite(loss):  # every step was skipped
                raise NonFiniteLoss(f"no finite loss in epoch {epoch + 1}; the last good checkpoint is kept")
            self.epoch = epoch + 1
            self.stats = None
            rec = {
                "epoch": self.epoch,
                "step": self.step,
                "loss": loss,
                "contrastive_acc": all_reduce_mean(stats.acc / stats.n).item(),
                "lr": warmup_cosine(self.step - 1, self.total_steps, self.warmup_steps, self.peak_lr),
                "epoch_time": elapsed,
                "images_per_sec": session_steps * bs / elapsed,  # global batch: every process's images
            }
            if self.skipped:
                rec["skipped_steps"] = self.skipped
            if self.num_classes:
                rec["online_loss"] = all_reduce_mean(stats.online_loss / stats.n).item()
                rec["online_acc"] = all_reduce_mean(stats.online_acc / stats.n).item()
            due = cfg.monitor.knn_every and (self.epoch % cfg.monitor.knn_every == 0 or self.epoch == t.epochs)
            # Every rank computes the monitor (only rank 0 records it): a rank idling while rank 0
            # works would sit in its next collective and could hit the distributed timeout.
            if due and self.train_set.has_labels:
                k0 = time.perf_counter()
                rec.update(self.knn_monitor())
                rec["knn_time"] = time.perf_counter() - k0
            if main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            history.append(rec)
            self.log(_format(rec))
            if self.epoch % t.checkpoint_every == 0 or self.epoch == t.epochs:
                self.save()
        return history


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def _format(rec: dict) -> str:
    parts = [f"epoch {rec['epoch']}", f"loss {rec['loss']:.4f}", f"acc {rec['contrastive_acc']:.3f}", f"lr {rec['lr']:.4g}",
             f"{rec['images_per_sec']:.0f} img/s"]
    if "online_acc" in rec:
        parts.append(f"online {rec['online_acc']:.3f}")
    if "knn_top1" in rec:
        parts.append(f"knn {rec['knn_top1']:.3f}")
    return "  ".join(parts)


def pretrain(cfg: Config, log=print) -> Path:
    """Run SimCLR pretraining as configured; returns the run folder.

    Loads the data, resolves the auto keys from the image size, validates, then trains (resuming
    from RUN/checkpoint.pt with ``train.resume``).
    """
    validate(cfg)
    env = init_distributed(pick_device(cfg.train.device).type, cfg.train.dist_timeout)
    try:
        run = _pretrain(cfg, env, log)
    except BaseException:
        shutdown(barrier=False)
        raise
    shutdown()
    return run


def _pretrain(cfg: Config, env: DistEnv, log) -> Path:
    train = load_data(cfg.data.path, cfg)
    image_size = cfg.data.image_size or train.side if train.images is not None else (cfg.data.image_size or 224)
    cfg = resolve(cfg, image_size)
    validate(cfg)
    val = load_data(cfg.data.val_path, cfg) if cfg.data.val_path else None
    trainer = Trainer(cfg, train, val, log, env)
    ckpt = Path(cfg.train.out) / "checkpoint.pt"
    if cfg.train.resume:
        if not ckpt.is_file():
            raise CheckpointError(f"--resume given but {ckpt} does not exist")
        trainer.load_state_dict(load_checkpoint(ckpt, map_location=trainer.device))
        trainer.log(f"resumed from {ckpt} at epoch {trainer.epoch}")
    trainer.fit()
    return Path(cfg.train.out)
