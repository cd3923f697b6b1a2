"""``pretrain(cfg)``: from a config to a trained run folder."""

from __future__ import annotations

from pathlib import Path

from simclr.config import Config, default_image_size, resolve, validate
from simclr.data import ImageSet, load_dataset
from simclr.runtime import pick_device
from simclr.train.distributed import DistEnv, init_distributed, shutdown
from simclr.train.run_folder import RunFolder
from simclr.train.trainer import Trainer

__all__ = ["pretrain", "load_training_data"]


def pretrain(cfg: Config, log=print) -> Path:
    """Run SimCLR pretraining as configured; returns the run folder.

    Validates, takes the run folder (``RunFolder.acquire``: locked, and changed only with ``train.resume``
    or ``train.overwrite``), loads the data, resolves the auto keys from the image size, then trains
    (continuing from the saved state with ``train.resume``). Under torchrun every process calls this.
    """
    validate(cfg)
    if cfg.train.tensorboard:  # before any work: the optional package is missing, say so in one line
        from simclr.train.tensorboard_log import require_tensorboard

        require_tensorboard()
    env = init_distributed(pick_device(cfg.train.device).type, cfg.train.dist_timeout)
    try:
        run = _pretrain(cfg, env, log)
    except BaseException:
        shutdown(barrier=False)
        raise
    shutdown()
    return run


def load_training_data(cfg: Config) -> tuple[Config, ImageSet, ImageSet | None]:
    """Load data.path (and data.val_path), then resolve the config's auto keys for the data's image size.

    Returns (the resolved, validated config, the training set, the monitor's labelled set or None).
    """
    train = load_dataset(cfg.data.path, cfg.data)
    size = cfg.data.image_size or default_image_size(train.side, cfg.data.in_memory_max_side)
    cfg = resolve(cfg, size)
    validate(cfg)
    val = load_dataset(cfg.data.val_path, cfg.data) if cfg.data.val_path else None
    return cfg, train, val


def _pretrain(cfg: Config, env: DistEnv, log) -> Path:
    # The run folder first: a folder that is taken, holds another run or cannot be written fails in one
    # line before any data is read.
    folder = RunFolder(cfg.train.out, is_main=env.is_main)
    resume = folder.acquire(resume=cfg.train.resume, overwrite=cfg.train.overwrite, checkpoint_every=cfg.train.checkpoint_every)
    try:
        cfg, train, val = load_training_data(cfg)
        trainer = Trainer(cfg, train, val, log, env, folder=folder)
        if resume:
            trainer.load_state_dict(folder.load(map_location=trainer.device))
            trainer.log(f"resumed from {folder.checkpoint} at epoch {trainer.epoch}")
        if trainer.epoch >= cfg.train.epochs:
            trainer.log(f"the run in {folder.path} already has {trainer.epoch} epochs (train.epochs {cfg.train.epochs}); "
                        "nothing to do (raise --epochs to train longer)")
        else:
            trainer.fit()
    finally:
        folder.release()
    return Path(cfg.train.out)
