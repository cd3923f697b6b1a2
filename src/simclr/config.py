"""Typed configuration: dataclasses, YAML recipes, dotted command-line overrides, validation.

Every knob of the paper is a key. Keys left at ``None`` are "auto": they are resolved from the
image size once the data is known (the paper's CIFAR setting at 32px or less, its ImageNet setting
above), and the resolved config is what every run saves in RUN/config.yaml.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simclr.models import ARCHITECTURES
from simclr.optim import OPTIMIZERS

__all__ = [
    "ConfigError",
    "DataConfig",
    "AugmentConfig",
    "ModelConfig",
    "HeadConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "MonitorConfig",
    "Config",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "resolve",
    "validate",
    "all_keys",
]


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it and exits with status 2."""


@dataclass
class DataConfig:
    path: str = ""  # image folder (class subfolders or flat), or cifar10 / cifar100 / synthetic
    data_dir: str = ""  # where cifar archives are cached/downloaded; "" = ~/.cache/simclr
    val_path: str = ""  # labelled folder for kNN monitoring; "" = leave-one-out on the training set
    image_size: int = 0  # training resolution; 0 = native side for small images, else 224
    max_per_class: int = 0  # keep only the first N images of each class (0 = all)
    in_memory_max_side: int = 96  # images this small are decoded once into memory
    num_workers: int = -1  # DataLoader workers for streamed (large) images; -1 = auto
    synthetic_train: int = 4000  # images in the synthetic train split
    synthetic_test: int = 1000  # images in the synthetic test split
    strict: bool = False  # stop at the first unreadable image instead of skipping it
    max_pixels: int = 89_478_485  # larger images are refused (decompression bombs)


@dataclass
class AugmentConfig:
    crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    flip_p: float = 0.5
    color: bool = True
    color_strength: float | None = None  # s; auto: 0.5 at <=32px, else 1.0
    color_p: float = 0.8
    grayscale: bool = True
    gray_p: float = 0.2
    blur: bool = True
    blur_p: float | None = None  # auto: 0 at <=32px, else 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    width: float = 1.0
    cifar_stem: bool | None = None  # auto: True at <=32px
    zero_init_residual: bool = True


@dataclass
class HeadConfig:
    num_layers: int = 2  # 0 none, 1 linear, 2 SimCLR v1, 3 SimCLRv2
    hidden_dim: int = 0  # 0 = num_features of the encoder
    out_dim: int = 128
    bn: bool = True


@dataclass
class LossConfig:
    # The paper's default (its Table 5: best of 0.05-1 with L2-normalised cosine similarity). Also the
    # best of 0.1/0.2/0.5 on short CIFAR-10 runs here (docs/benchmarks.md); the official README's
    # 1000-epoch CIFAR setting uses 0.5, as configs/cifar10_resnet18.yaml does.
    temperature: float = 0.1


@dataclass
class OptimConfig:
    name: str = "lars"
    base_lr: float | None = None  # auto: 1.0 at <=32px (official CIFAR), else 0.3 (ImageNet)
    lr_scaling: str = "linear"  # linear: base*B/256; sqrt: base*sqrt(B); none
    weight_decay: float | None = None  # auto: 1e-4 at <=32px (official CIFAR), else 1e-6
    momentum: float = 0.9
    eta: float = 0.001
    warmup_epochs: float = 10.0
    warmup_max_fraction: float = 0.1  # warmup never exceeds this share of the run


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 elsewhere), bf16, fp16, fp32
    channels_last: bool = True
    compile: bool = False
    out: str = "runs/simclr"
    resume: bool = False
    checkpoint_every: int = 1  # epochs
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave PyTorch's default
    dist_timeout: float = 60.0  # seconds a collective may wait under torchrun before the run fails
    # > 0: gradient-cached step over chunks of this many images (huge batches on one device; BN then
    # sees chunk statistics, see docs/distributed.md); 0: the plain step.
    chunk_size: int = 0
    keep_checkpoints: int = 1  # > 1: also keep the last K epoch checkpoints in RUN/checkpoints/
    skip_nonfinite: bool = False  # skip (and count) steps whose loss is NaN/inf instead of stopping
    progress: bool = True


@dataclass
class MonitorConfig:
    online_linear: bool = True  # linear classifier on detached h, trained alongside (needs labels)
    knn_every: int = 10  # epochs between kNN evaluations (the last epoch always has one); 0 = off
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_max_images: int = 10000  # cap on bank/query images used by the monitor


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cfg_cls=Config) -> list[str]:
    """Every dotted key, e.g. ``loss.temperature``."""
    keys = []
    for section, sec_type in _field_types(cfg_cls).items():
        keys += [f"{section}.{k}" for k in _field_types(sec_type)]
    return keys


def _closest(key: str, options: list[str]) -> str:
    match = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "auto")):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(tp)):
            raise ConfigError(f"{key} must be a pair like [0.08, 1.0], got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, typing.get_args(tp)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def config_from_dict(d: dict[str, Any], base: Config | None = None) -> Config:
    """Build a Config from a nested dict (as in YAML), starting from ``base`` or the defaults."""
    cfg = dataclasses.replace(base) if base else Config()
    cfg = config_from_flat({f"{s}.{k}": v for s, sec in _check_sections(d).items() for k, v in sec.items()}, cfg)
    return cfg


def _check_sections(d: Any) -> dict[str, dict]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    sections = list(_field_types(Config))
    for s, v in d.items():
        if s not in sections:
            raise ConfigError(f"unknown config section '{s}'{_closest(str(s), sections)}")
        if not isinstance(v, dict):
            raise ConfigError(f"config section '{s}' must be a mapping, got {v!r}")
    return d


def config_from_flat(flat: dict[str, Any], base: Config | None = None) -> Config:
    """Apply {dotted key: value} on top of ``base`` (a copy is returned)."""
    cfg = _copy(base or Config())
    keys = all_keys()
    for key, value in flat.items():
        if key not in keys:
            raise ConfigError(f"unknown config key '{key}'{_closest(key, keys)}")
        section, name = key.split(".", 1)
        sec = getattr(cfg, section)
        tp = _field_types(type(sec))[name]
        setattr(sec, name, _coerce(value, tp, key))
    return cfg


def _copy(cfg: Config) -> Config:
    return Config(**{s: dataclasses.replace(getattr(cfg, s)) for s in _field_types(Config)})


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    out = {}
    for s in _field_types(Config):
        sec = dataclasses.asdict(getattr(cfg, s))
        out[s] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sec.items()}
    return out


def load_config(path: str | Path, base: Config | None = None) -> Config:
    """Load a YAML recipe on top of ``base`` (default: the defaults)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}".splitlines()[0]) from None
    return config_from_dict(data or {}, base)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def apply_overrides(cfg: Config, pairs: list[tuple[str, str]]) -> Config:
    """Apply command-line ``--section.key value`` pairs (keys may use '-' for '_')."""
    return config_from_flat({k.replace("-", "_"): v for k, v in pairs}, cfg)


# ---------------------------------------------------------------------------------------------
# resolution of "auto" keys and validation


def resolve(cfg: Config, image_size: int) -> Config:
    """Fill every auto (None / 0) key for training at ``image_size`` pixels; returns a copy."""
    cfg = _copy(cfg)
    small = image_size <= 32
    cfg.data.image_size = image_size
    a = cfg.augment
    if a.color_strength is None:
        a.color_strength = 0.5 if small else 1.0
    if a.blur_p is None:
        a.blur_p = 0.0 if small else 0.5
    if cfg.model.cifar_stem is None:
        cfg.model.cifar_stem = small
    if cfg.optim.base_lr is None:
        cfg.optim.base_lr = 1.0 if small else 0.3
    if cfg.optim.weight_decay is None:
        cfg.optim.weight_decay = 1e-4 if small else 1e-6
    return cfg


def validate(cfg: Config) -> None:
    """Raise ConfigError for any invalid value, before any work starts."""
    errs: list[str] = []

    def check(ok: bool, msg: str) -> None:
        if not ok:
            errs.append(msg)

    d, a, m, h, lo, o, t, mon = cfg.data, cfg.augment, cfg.model, cfg.head, cfg.loss, cfg.optim, cfg.train, cfg.monitor
    check(d.image_size >= 0, f"data.image_size must be >= 0 (0 = auto), got {d.image_size}")
    check(d.max_pixels >= 1, f"data.max_pixels must be >= 1, got {d.max_pixels}")
    check(d.max_per_class >= 0, f"data.max_per_class must be >= 0, got {d.max_per_class}")
    check(d.synthetic_train >= 2 and d.synthetic_test >= 1, "data.synthetic_train must be >= 2 and data.synthetic_test >= 1")
    check(0 < a.crop_scale[0] <= a.crop_scale[1] <= 1, f"augment.crop_scale must satisfy 0 < min <= max <= 1, got {list(a.crop_scale)}")
    check(0 < a.crop_ratio[0] <= a.crop_ratio[1], f"augment.crop_ratio must satisfy 0 < min <= max, got {list(a.crop_ratio)}")
    for name in ("flip_p", "color_p", "gray_p", "blur_p"):
        p = getattr(a, name)
        check(p is None or 0 <= p <= 1, f"augment.{name} must be in [0, 1], got {p}")
    check(a.color_strength is None or a.color_strength >= 0, f"augment.color_strength must be >= 0, got {a.color_strength}")
    check(0 < a.blur_sigma[0] <= a.blur_sigma[1], f"augment.blur_sigma must satisfy 0 < min <= max, got {list(a.blur_sigma)}")
    check(m.arch in ARCHITECTURES, f"model.arch '{m.arch}' is unknown; choose one of {', '.join(ARCHITECTURES)}")
    check(m.width > 0, f"model.width must be > 0, got {m.width}")
    check(h.num_layers >= 0, f"head.num_layers must be >= 0, got {h.num_layers}")
    check(h.out_dim >= 1 and h.hidden_dim >= 0, "head.out_dim must be >= 1 and head.hidden_dim >= 0")
    check(lo.temperature > 0, f"loss.temperature must be > 0, got {lo.temperature}")
    check(o.name in OPTIMIZERS, f"optim.name '{o.name}' is unknown; choose one of {', '.join(OPTIMIZERS)}")
    check(o.base_lr is None or o.base_lr >= 0, f"optim.base_lr must be >= 0, got {o.base_lr}")
    check(o.lr_scaling in ("linear", "sqrt", "none"), f"optim.lr_scaling must be linear, sqrt or none, got '{o.lr_scaling}'")
    check(o.weight_decay is None or o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}")
    check(o.eta > 0, f"optim.eta must be > 0, got {o.eta}")
    check(o.warmup_epochs >= 0, f"optim.warmup_epochs must be >= 0, got {o.warmup_epochs}")
    check(0 <= o.warmup_max_fraction <= 1, f"optim.warmup_max_fraction must be in [0, 1], got {o.warmup_max_fraction}")
    check(t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}")
    check(t.batch_size >= 2, f"train.batch_size must be >= 2 (each image needs negatives), got {t.batch_size}")
    check(t.precision in ("auto", "bf16", "fp16", "fp32"), f"train.precision must be auto, bf16, fp16 or fp32, got '{t.precision}'")
    check(t.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {t.checkpoint_every}")
    check(t.threads >= 0, f"train.threads must be >= 0, got {t.threads}")
    check(t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    check(t.chunk_size >= 0, f"train.chunk_size must be >= 0, got {t.chunk_size}")
    check(t.dist_timeout > 0, f"train.dist_timeout must be > 0, got {t.dist_timeout}")
    check(bool(t.out), "train.out must name a run folder")
    check(mon.knn_every >= 0, f"monitor.knn_every must be >= 0, got {mon.knn_every}")
    check(mon.knn_k >= 1, f"monitor.knn_k must be >= 1, got {mon.knn_k}")
    check(mon.knn_temperature > 0, f"monitor.knn_temperature must be > 0, got {mon.knn_temperature}")
    if errs:
        raise ConfigError("; ".join(errs))
