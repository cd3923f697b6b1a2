"""Pretraining: the loop (``trainer``), its backward paths (``step``), the run folder (``run_folder``), the
kNN monitor (``monitor``), torchrun support (``distributed``) and the entry point ``pretrain``."""

from simclr.train.pretrain import pretrain
from simclr.train.trainer import Interrupted, NonFiniteLoss, Trainer

__all__ = ["Interrupted", "NonFiniteLoss", "Trainer", "pretrain"]
