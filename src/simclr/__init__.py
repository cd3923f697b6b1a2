"""simclr: SimCLR (Chen et al., 2020) and its v2 refinements, faithful and fast.

The pieces for your own training loop (docs/api.md, examples/own_loop.py)::

    from simclr import SimCLRAugment, resnet18, ProjectionHead, nt_xent, LARS, param_groups, warmup_cosine

They are loaded on first use, so ``import simclr`` (and ``simclr --version``) stays instant.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it; these names and their signatures are the stable API
_API = {
    # views
    "SimCLRAugment": "simclr.data.augment", "center_resize": "simclr.data.augment",
    # encoders f and heads g
    "ResNet": "simclr.model.resnet", "build_encoder": "simclr.model.resnet", "resnet18": "simclr.model.resnet",
    "resnet34": "simclr.model.resnet", "resnet50": "simclr.model.resnet", "resnet101": "simclr.model.resnet",
    "resnet152": "simclr.model.resnet", "resnet_from_state_dict": "simclr.model.resnet",
    "ProjectionHead": "simclr.model.head", "SimCLR": "simclr.model.simclr",
    # losses
    "nt_xent": "simclr.model.losses", "nt_xent_with_accuracy": "simclr.model.losses", "nt_logistic": "simclr.model.losses",
    "margin_triplet": "simclr.model.losses", "contrastive_logits": "simclr.model.losses",
    "gather_with_grad": "simclr.train.distributed", "distill_loss": "simclr.evaluate.distill",
    # optimisation
    "LARS": "simclr.optim", "param_groups": "simclr.optim", "warmup_cosine": "simclr.optim", "scaled_lr": "simclr.optim",
    # runs, configs, evaluation
    "Config": "simclr.config", "load_config": "simclr.config", "load_run": "simclr.checkpoint",
    "extract_features": "simclr.evaluate.features", "knn_accuracy": "simclr.evaluate.knn",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'simclr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
