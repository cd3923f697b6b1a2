"""Typed configuration: every setting of every command, its one default, its range, its auto rule.

Each command has a root dataclass made of sections (``Config`` for ``pretrain``, ``KnnConfig``,
``LinearConfig``, ... for the evaluation commands); each section field is a key ``section.name``
with a default, a one-line help text and its valid range in the field's metadata. The same code
reads YAML recipes, dotted command-line overrides (``--loss.temperature 0.2``) and keyword
arguments, and one validation pass (``validate``) checks every value before any work starts.

"Auto" is always spelled ``auto`` (``None`` in Python): such keys are resolved once the data is
known (``resolve``), and the resolved config is what every run saves in RUN/config.yaml. The auto
rules are the functions right below; nothing else in the package re-states them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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
    "EncoderSource",
    "EvalSettings",
    "KnnSettings",
    "LinearSettings",
    "FinetuneSettings",
    "EmbedSettings",
    "ExportSettings",
    "AnalyzeSettings",
    "KnnConfig",
    "LinearConfig",
    "FinetuneConfig",
    "EmbedConfig",
    "ExportConfig",
    "AnalyzeConfig",
    "ViewsSettings",
    "ViewsConfig",
    "COMMAND_CONFIGS",
    "small_images",
    "default_image_size",
    "default_num_workers",
    "load_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "config_from_flat",
    "save_config",
    "resolve",
    "resolve_augment",
    "validate",
    "check_section",
    "all_keys",
    "describe",
    "key_help",
    "short",
]


class ConfigError(ValueError):
    """A configuration problem the user can fix; the CLI prints it and exits with status 2."""


# ---------------------------------------------------------------------------------------------
# auto rules: each written once, here

SMALL_IMAGE_SIDE = 32  # at this side or less the paper's CIFAR-10 setting applies


def small_images(image_size: int) -> bool:
    """True when ``image_size`` gets the paper's CIFAR-10 setting (CIFAR stem, s=0.5, no blur, ...)."""
    return image_size <= SMALL_IMAGE_SIDE


def default_image_size(native_side: int, in_memory_max_side: int) -> int:
    """``data.image_size`` auto: small (in-memory) images train at their native side, large ones at 224."""
    return native_side if native_side <= in_memory_max_side else 224


def default_num_workers() -> int:
    """``data.num_workers`` auto: one loader process per spare core, at most 8."""
    return min(8, max(1, (os.cpu_count() or 2) - 1))


# ---------------------------------------------------------------------------------------------
# keys


def key(default: Any, help: str, *, lo: float | None = None, hi: float | None = None, gt: float | None = None,
        lt: float | None = None, choices: tuple | None = None, choices_from: str | None = None) -> Any:
    """A config field: its default, a one-line help text and its valid range.

    ``lo``/``hi`` are inclusive bounds, ``gt``/``lt`` exclusive ones (for pairs: each element);
    ``choices`` lists the allowed strings, ``choices_from`` names a registry ("arch", "optim", "device").
    Every float must also be finite.
    """
    meta = dict(help=help, lo=lo, hi=hi, gt=gt, lt=lt, choices=choices, choices_from=choices_from)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


BIG = 2**31 - 1  # the largest count any key accepts (sizes, epochs, steps)
SEED_MAX = 2**32 - 1  # numpy and torch both accept seeds in [0, 2**32)
KNN_K = 200  # neighbours of the weighted kNN (Wu et al., 2018), for the monitor and `simclr knn`
KNN_TEMPERATURE = 0.1


@dataclass
class DataConfig:
    path: str = key("", "image folder (class subfolders or flat), WebDataset .tar shards (a file, a brace "
                                "pattern such as train-{000000..000031}.tar, several joined by '::', or a folder of .tar files), "
                                "or cifar10 / cifar100 / stl10 / synthetic, optionally :test (stl10 also :unlabeled, :train+unlabeled)")
    data_dir: str = key("", "where CIFAR and STL-10 archives are cached or downloaded; empty = $SIMCLR_DATA_DIR or ~/.cache/simclr")
    val_path: str = key("", "labelled held-out images: the kNN monitor's queries (pretrain), the test set (evaluation)")
    image_size: int | None = key(None, "training/evaluation side in pixels; auto: native side of small images, else 224 "
                                       "(evaluation: the checkpoint's)", lo=1, hi=4096)
    max_per_class: int = key(0, "keep only the first N images of each class (0 = all)", lo=0, hi=BIG)
    in_memory_max_side: int = key(96, "images this small (pixels) are decoded once into memory; larger ones stream", lo=1, hi=4096)
    num_workers: int | None = key(None, "loader processes for streamed images; auto: cores - 1, at most 8", lo=0, hi=64)
    synthetic_train: int = key(4000, "images in the synthetic train split", lo=2, hi=10_000_000)
    synthetic_test: int = key(1000, "images in the synthetic test split", lo=1, hi=10_000_000)
    strict: bool = key(False, "stop at the first unreadable image instead of skipping it")
    max_pixels: int = key(89_478_485, "larger images are refused as likely decompression bombs (Pillow's threshold)", lo=1, hi=2**40)


@dataclass
class AugmentConfig:
    # official: google-research/simclr's crop sampler (TF sample_distorted_bounding_box), saturation scaled in
    # HSV, blur with zero padding and one sigma per batch; torchvision: RandomResizedCrop's sampler, saturation
    # blended with the grayscale image, blur with reflect padding and one sigma per image (docs/faithfulness.md).
    convention: str = key("official", "official (google-research/simclr) or torchvision: crop sampler, saturation, blur",
                          choices=("official", "torchvision"))
    crop: bool = key(True, "random resized crop (else the whole image is resized)")
    crop_scale: tuple[float, float] = key((0.08, 1.0), "crop area as a fraction of the image [min, max]", gt=0, hi=1)
    crop_ratio: tuple[float, float] = key((3 / 4, 4 / 3), "crop aspect ratio w/h [min, max]: uniform (official) or log-uniform (torchvision)", gt=0, hi=100)
    flip: bool = key(True, "random horizontal flip")
    flip_p: float = key(0.5, "probability of the flip", lo=0, hi=1)
    color: bool = key(True, "colour distortion (brightness, contrast, saturation, hue in random order)")
    color_strength: float | None = key(None, "s: factors in [1-0.8s, 1+0.8s], hue +-0.2s; auto: 0.5 at <=32px, else 1.0",
                                       lo=0, hi=100)
    color_p: float = key(0.8, "probability of the colour distortion", lo=0, hi=1)
    grayscale: bool = key(True, "random conversion to grayscale")
    gray_p: float = key(0.2, "probability of grayscale", lo=0, hi=1)
    blur: bool = key(True, "Gaussian blur")
    blur_p: float | None = key(None, "probability of the blur; auto: 0 at <=32px, else 0.5", lo=0, hi=1)
    blur_sigma: tuple[float, float] = key((0.1, 2.0), "blur standard deviation [min, max], pixels", gt=0, hi=1000)
    blur_kernel_frac: float = key(0.1, "blur kernel size as a fraction of the side", lo=0, hi=1)
    # The paper's other transformations (its Figure 4), applied only where a view's list names them.
    cutout_p: float = key(1.0, "probability of cutout (a zeroed square) where a view lists it", lo=0, hi=1)
    cutout_frac: float = key(0.5, "cutout square side as a fraction of the view side", gt=0, hi=1)
    sobel_p: float = key(1.0, "probability of Sobel filtering where a view lists it", lo=0, hi=1)
    noise_p: float = key(1.0, "probability of Gaussian noise where a view lists it", lo=0, hi=1)
    noise_std: float = key(0.1, "standard deviation of the Gaussian noise, on pixels in [0, 1]", lo=0, hi=1)
    rotate_p: float = key(1.0, "probability of a rotation by 90, 180 or 270 degrees where a view lists it", lo=0, hi=1)
    # Each view's transformations, in the order they apply; "simclr" is the chain above (crop, color, blur).
    view1: str = key("simclr", "first view: simclr, none, or a comma list of crop, flip, color, jitter, gray, blur, "
                               "cutout, sobel, noise, rotate (in order)")
    view2: str = key("simclr", "second view: as view1 (e.g. none for the paper's Figure 5: one view only transformed)")

    # The names a view's list may use (no annotation: class constants, not keys). color = jitter then gray
    # (the paper's colour distortion); crop includes the flip (augment.flip, flip_p); simclr = crop,color,blur.
    TRANSFORMS = ("crop", "flip", "color", "jitter", "gray", "blur", "cutout", "sobel", "noise", "rotate")
    SIMCLR_VIEW = ("crop", "color", "blur")
    ALIASES = (("colour", "color"), ("grayscale", "gray"))

    def __setattr__(self, name: str, value: Any) -> None:
        # The view lists are checked (and written canonically) whenever they are set: YAML, flags, keywords.
        if name in ("view1", "view2"):
            value = AugmentConfig.canonical_view(value, f"augment.{name}")
        object.__setattr__(self, name, value)

    @staticmethod
    def canonical_view(value: Any, name: str = "augment.view1") -> str:
        """A view's list as written in config.yaml: "simclr", "none" or names joined by commas (lowercase,
        aliases resolved). Accepts a string ("crop, sobel", "[crop, sobel]", "" = none) or a list of names;
        raises a one-line ConfigError naming the key otherwise."""
        valid = ("simclr", "none", *AugmentConfig.TRANSFORMS)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a comma list of transformations, got {short(value)}")
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        aliases = dict(AugmentConfig.ALIASES)
        names = [aliases.get(n.strip().lower(), n.strip().lower()) for n in text.split(",")]
        names = [n for n in names if n]
        if names in ([], ["none"]):
            return "none"
        for n in names:
            if n not in valid:
                raise ConfigError(f"{name}: unknown transformation '{_clip(n, 40)}' (a view is simclr, none, or a comma "
                                  f"list of {', '.join(AugmentConfig.TRANSFORMS)}){_closest(n, list(valid))}")
        if "none" in names and len(names) > 1:
            raise ConfigError(f"{name}: 'none' cannot be combined with other transformations, got '{_clip(value, 60)}'")
        expanded = AugmentConfig.expand_view(",".join(names))
        twice = sorted({n for n in expanded if expanded.count(n) > 1})
        if twice:
            raise ConfigError(f"{name} names {', '.join(twice)} twice (simclr is {','.join(AugmentConfig.SIMCLR_VIEW)})")
        return ",".join(names)

    @staticmethod
    def expand_view(text: str) -> tuple[str, ...]:
        """The transformations of a canonical view list, in order, with simclr written out."""
        out: list[str] = []
        for n in text.split(","):
            if n == "simclr":
                out += AugmentConfig.SIMCLR_VIEW
            elif n and n != "none":
                out.append(n)
        return tuple(out)


@dataclass
class ModelConfig:
    arch: str = key("resnet50", "encoder architecture", choices_from="arch")
    width: float = key(1.0, "width multiplier of every layer (1, 2, 4, or e.g. 0.25 for small runs)", gt=0, hi=16)
    cifar_stem: bool | None = key(None, "3x3 stride-1 stem without max-pool; auto: true at <=32px")
    zero_init_residual: bool = key(True, "start each residual branch's last BN at zero")
    # The official ResNet-18/34 give the first block of stage 1 a projection shortcut; torchvision's (and so
    # exports loading into torchvision) use identity there. Bottleneck ResNets have it either way.
    stage1_projection: bool = key(False, "projection shortcut in stage 1 of ResNet-18/34 (the official network)")
    # SimCLRv2's selective-kernel ResNets (official tf2/resnet.py): its checkpoints use 0.0625.
    sk_ratio: float = key(0.0, "selective-kernel ratio of the 3x3 convolutions (SimCLRv2: 0.0625; 0 = plain ResNet); "
                               "> 0 also gives the 3-conv stem and avg-pool shortcuts of the official SK networks", lo=0, hi=1)
    tf_padding: bool = key(False, "stem max-pool windows placed as TensorFlow's SAME padding (the official checkpoints); "
                                  "false = torchvision's")


@dataclass
class HeadConfig:
    num_layers: int = key(2, "projection head layers: 0 none, 1 linear, 2 SimCLR v1, 3 SimCLRv2", lo=0, hi=16)
    hidden_dim: int | None = key(None, "hidden width; auto: the encoder's output size", lo=1, hi=1 << 20)
    out_dim: int = key(128, "size of z, where the loss is applied", lo=1, hi=1 << 20)
    bn: bool = key(True, "batch normalisation after each linear layer")


@dataclass
class LossConfig:
    # The paper's default (its Table 5: best of 0.05-1 with L2-normalised cosine similarity). Also the
    # best of 0.1/0.2/0.5 on short CIFAR-10 runs here (docs/benchmarks.md); the official README's
    # 1000-epoch CIFAR setting uses 0.5, as configs/cifar10_resnet18.yaml does.
    temperature: float = key(0.1, "tau of NT-Xent and NT-Logistic", gt=0, hi=1e4)
    # The official objective (tf2/objective.py) is loss_a + loss_b, twice the paper's L; weight decay and the
    # BN/bias steps under LARS were tuned with that scale. Metrics report L either way.
    objective: str = key("official", "what is minimised: official = 2L (sum of both directions' means), paper = L",
                         choices=("official", "paper"))
    # The paper's Table 2 / Table 4 losses (simclr.model.losses); each uses all 2N-2 negatives of an anchor.
    # supervised: the baseline of its Table 1, the same views trained with labels (cross-entropy of a linear
    # classifier on h) instead of a contrastive task.
    name: str = key("nt_xent", "loss: nt_xent (the paper's), nt_logistic or margin_triplet (its Table 2), or supervised "
                               "(cross-entropy of a linear classifier on h with the images' labels: Table 1's baseline)",
                    choices=("nt_xent", "nt_logistic", "margin_triplet", "supervised"))
    l2_normalize: bool = key(True, "compare L2-normalised projections (cosine similarity); false = raw dot products (Table 5)")
    semi_hard: bool = key(False, "semi-hard negative mining for nt_logistic and margin_triplet (Table 4's (sh) rows)")
    margin: float = key(0.5, "margin m of margin_triplet: max(0, s(anchor, negative) - s(anchor, positive) + m)", lo=0, hi=1e4)


@dataclass
class OptimConfig:
    name: str = key("lars", "optimiser", choices_from="optim")
    base_lr: float | None = key(None, "base learning rate before batch scaling; auto: 1.0 at <=32px (official CIFAR), "
                                      "else 0.3 (ImageNet)", lo=0)
    lr_scaling: str = key("linear", "peak lr: linear = base x B/256, sqrt = base x sqrt(B), none = base",
                          choices=("linear", "sqrt", "none"))
    weight_decay: float | None = key(None, "L2 weight decay; auto: 1e-4 at <=32px (official CIFAR), else 1e-6", lo=0, hi=1)
    momentum: float = key(0.9, "momentum", lo=0, lt=1)
    eta: float = key(0.001, "LARS trust coefficient", gt=0, hi=1e3)
    warmup_epochs: float = key(10.0, "linear warmup length, epochs", lo=0, hi=1e6)
    warmup_max_fraction: float = key(0.1, "warmup never exceeds this share of the run", lo=0, hi=1)


@dataclass
class TrainConfig:
    epochs: int = key(100, "training epochs", lo=1, hi=1_000_000)
    batch_size: int = key(256, "global batch size N (2N views); split across processes under torchrun", lo=2, hi=1 << 24)
    seed: int = key(0, "seed of the initialisation, the data order and every augmentation", lo=0, hi=SEED_MAX)
    device: str = key("auto", "auto, cpu, cuda, cuda:N or mps", choices_from="device")
    precision: str = key("auto", "auto (bf16 on CUDA and on CPUs with native bf16, fp32 elsewhere), bf16, fp16 or fp32", choices=("auto", "bf16", "fp16", "fp32"))
    channels_last: bool = key(True, "channels-last memory format (faster convolutions)")
    compile: bool = key(False, "torch.compile the model")
    out: str = key("runs/simclr", "run folder")
    resume: bool = key(False, "continue the run in train.out (from the beginning when it has no checkpoint yet)")
    overwrite: bool = key(False, "replace the run in train.out (its files are removed first)")
    checkpoint_every: int = key(1, "epochs between checkpoints", lo=1, hi=1_000_000)
    checkpoint_minutes: float = key(15.0, "also checkpoint mid-epoch after this many minutes (preemptible machines); 0 = off",
                                    lo=0, hi=1e6)
    threads: int = key(0, "torch intra-op threads on CPU; 0 = PyTorch's default", lo=0, hi=1024)
    # Longer than a cold torch.compile (20-117 s measured on CPU) or a slow rank's first indexing of a big folder.
    dist_timeout: float = key(600.0, "seconds a collective may wait under torchrun before the run fails", gt=0, hi=1e6)
    # > 0: gradient-cached step over chunks of this many images (huge batches on one device; BN then
    # sees chunk statistics, see docs/distributed.md); 0: the plain step.
    chunk_size: int = key(0, "> 0: gradient-cached step over chunks of this many images; 0: the plain step", lo=0, hi=1 << 24)
    keep_checkpoints: int = key(1, "> 1: also keep the last K epoch checkpoints in RUN/checkpoints/", lo=1, hi=100_000)
    skip_nonfinite: bool = key(False, "skip (and count) steps whose loss is NaN/inf instead of stopping")
    progress: bool = key(True, "progress bar on a terminal; in a log file (stderr not a terminal), a plain line every log_every steps")
    tensorboard: bool = key(False, "also log to TensorBoard in RUN/tb (scalars, the first views, the embedding projector); "
                                   "needs pip install 'simclr[tensorboard]'")
    tensorboard_every: int = key(10, "steps between TensorBoard's per-step scalars (0: epoch ends only)", lo=0, hi=1 << 30)
    log_every: int = key(50, "steps between progress lines when stderr is not a terminal (0: one line per epoch only)",
                         lo=0, hi=1 << 30)


@dataclass
class MonitorConfig:
    online_linear: bool = key(True, "linear classifier on detached h, trained alongside (needs labels)")
    knn_every: int = key(10, "epochs between kNN evaluations (the last epoch always has one); 0 = off", lo=0, hi=1_000_000)
    knn_k: int = key(KNN_K, "neighbours of the kNN monitor", lo=1, hi=BIG)
    knn_temperature: float = key(KNN_TEMPERATURE, "temperature of the kNN vote weights exp(sim/T)", gt=0, hi=1e4)
    knn_max_images: int = key(10000, "cap on bank/query images used by the monitor", lo=1, hi=BIG)


@dataclass
class Config:
    """``simclr pretrain``."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


# -- evaluation commands -------------------------------------------------------------------------


@dataclass
class EncoderSource:
    checkpoint: str = key("", "run folder or checkpoint.pt of a pretraining run")
    random_init: bool = key(False, "a randomly initialised encoder (the baseline) instead of a checkpoint")
    arch: str = key("resnet18", "with random_init: the architecture", choices_from="arch")
    width: float = key(1.0, "with random_init: the width multiplier", gt=0, hi=16)


@dataclass
class EvalSettings:
    device: str = key("auto", "auto, cpu, cuda, cuda:N or mps", choices_from="device")
    seed: int = key(0, "seed of the random encoder, the splits, the classifier and the views", lo=0, hi=SEED_MAX)
    batch_size: int = key(256, "images per batch (feature extraction and training)", lo=1, hi=1 << 24)
    out: str = key("", "output folder (file for export)")
    json: bool = key(False, "end with one JSON line on stdout")
    crop_fraction: float | None = key(None, "evaluation view: centre square of this fraction of the shorter side; "
                                            "auto: 0.875 above 32px (official), 1 at <=32px", gt=0, hi=1)


@dataclass
class KnnSettings:
    k: int = key(KNN_K, "neighbours", lo=1, hi=BIG)
    temperature: float = key(KNN_TEMPERATURE, "vote weights exp(cos / T)", gt=0, hi=1e4)


@dataclass
class LinearSettings:
    solver: str = key("sgd", "sgd (the paper's ImageNet protocol) or lbfgs (its transfer protocol)", choices=("sgd", "lbfgs"))
    epochs: int = key(90, "sgd: epochs", lo=1, hi=1_000_000)
    lr: float = key(0.1, "sgd: base learning rate, scaled by B/256", gt=0, hi=1e6)
    grid: int = key(12, "lbfgs: number of L2 strengths tried in [1e-6, 1e5]", lo=1, hi=1000)
    val_fraction: float = key(0.2, "lbfgs: validation share of the training data", gt=0, lt=1)
    projection: bool = key(False, "classify z = g(h), the projection head's output, instead of h (the paper's Figure 8)")


@dataclass
class FinetuneSettings:
    label_fraction: float = key(0.1, "share of the training labels used (class-balanced)", gt=0, hi=1)
    epochs: int = key(30, "epochs", lo=1, hi=1_000_000)
    lr: float = key(0.05, "base learning rate, scaled by B/256", gt=0, hi=1e6)
    from_head_layer: int = key(0, "SimCLRv2: classify from the output of this projection-head layer (0 = from h)", lo=0, hi=16)


@dataclass
class DistillSettings:
    teacher: str = key("", "output folder of simclr finetune (or distill) holding the teacher, finetuned.safetensors")
    arch: str = key("", "student architecture; empty: the teacher's", choices_from="arch_or_empty")
    width: float = key(0.0, "student width multiplier; 0: the teacher's", lo=0, hi=16)
    epochs: int = key(30, "epochs over the unlabelled images", lo=1, hi=1_000_000)
    lr: float = key(0.1, "base learning rate, scaled by B/256 (SGD with Nesterov momentum, cosine)", gt=0, hi=1e6)
    temperature: float = key(1.0, "t of the softened predictions P(y|x; t) = softmax(logits / t)", gt=0, hi=1e4)
    labels_weight: float = key(0.0, "weight of the cross-entropy on the teacher's labelled images (SimCLRv2's 1 - alpha); "
                                    "0: distillation alone", lo=0, hi=1)


@dataclass
class EmbedSettings:
    projection: bool = key(False, "write z = g(h) instead of h")


@dataclass
class ExportSettings:
    format: str = key("safetensors", "safetensors, torchvision or onnx", choices=("safetensors", "torchvision", "onnx"))


@dataclass
class AnalyzeSettings:
    max_images: int = key(2000, "images analysed (a random sample)", lo=10, hi=BIG)


@dataclass
class KnnConfig:
    """``simclr knn``: weighted kNN accuracy of h (data.path: train, data.val_path: test)."""

    encoder: EncoderSource = field(default_factory=EncoderSource)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    knn: KnnSettings = field(default_factory=KnnSettings)


@dataclass
class LinearConfig:
    """``simclr linear``: linear evaluation of the frozen encoder."""

    encoder: EncoderSource = field(default_factory=EncoderSource)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    linear: LinearSettings = field(default_factory=LinearSettings)


@dataclass
class FinetuneConfig:
    """``simclr finetune``: semi-supervised fine-tuning on a fraction of the labels."""

    encoder: EncoderSource = field(default_factory=EncoderSource)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)


@dataclass
class DistillConfig:
    """``simclr distill``: a student learns a fine-tuned teacher's predictions on unlabelled images (SimCLRv2)."""

    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)


@dataclass
class EmbedConfig:
    """``simclr embed``: the representation of every image."""

    encoder: EncoderSource = field(default_factory=EncoderSource)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    embed: EmbedSettings = field(default_factory=EmbedSettings)


@dataclass
class ExportConfig:
    """``simclr export``: the encoder alone, in another format."""

    encoder: EncoderSource = field(default_factory=EncoderSource)
    eval: EvalSettings = field(default_factory=EvalSettings)
    export: ExportSettings = field(default_factory=ExportSettings)


@dataclass
class AnalyzeConfig:
    """``simclr analyze``: alignment, uniformity, rank, collapse, a map and neighbours."""

    encoder: EncoderSource = field(default_factory=EncoderSource)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    analyze: AnalyzeSettings = field(default_factory=AnalyzeSettings)


# -- tools -----------------------------------------------------------------------------------------


@dataclass
class ViewsSettings:
    out: str = key("", "output folder: views.png (original | view 1 | view 2) and views.npy (uint8 (n, 2, 3, S, S))")
    n: int = key(64, "images: the first n of epoch 0's order (more than epoch 0 holds: all of them)", lo=1, hi=BIG)
    rows: int = key(32, "rows drawn in views.png (views.npy holds all n)", lo=1, hi=1024)
    json: bool = key(False, "end with one JSON line on stdout")


@dataclass
class ViewsConfig:
    """``simclr views``: the two training views of the first images of epoch 0, exactly as pretrain computes them
    (every pretrain key, so a recipe gives the views its run will see, plus where to write them)."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    views: ViewsSettings = field(default_factory=ViewsSettings)


COMMAND_CONFIGS: dict[str, type] = {
    "pretrain": Config,
    "knn": KnnConfig,
    "linear": LinearConfig,
    "finetune": FinetuneConfig,
    "distill": DistillConfig,
    "embed": EmbedConfig,
    "export": ExportConfig,
    "analyze": AnalyzeConfig,
    "views": ViewsConfig,
}

# Keys added after the first release whose default changed what a run computes: a saved config without them
# ran with these values (``as_saved``), so resuming it with the new defaults is a conflict, not a silent switch.
ADDED_KEYS = {"augment": {"convention": "torchvision"}, "loss": {"objective": "paper"},
              "model": {"stage1_projection": False, "sk_ratio": 0.0, "tf_padding": False}}


def as_saved(d: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict with the keys it predates filled with the values its run used (``ADDED_KEYS``)."""
    out = {sec: dict(keys) if isinstance(keys, dict) else keys for sec, keys in d.items()}
    for sec, added in ADDED_KEYS.items():
        if isinstance(out.get(sec), dict):
            out[sec] = {**added, **out[sec]}
    return out


# Values the first release wrote for "auto"; old recipes and run folders still load.
_LEGACY_AUTO = {("data", "image_size"): 0, ("data", "num_workers"): -1, ("head", "hidden_dim"): 0}


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 60, 60, 4, 4, 2


def short(value: Any) -> str:
    """A bounded repr for error messages (a YAML alias bomb must not become a 300 MB line)."""
    return _short.repr(value)


def _clip(text: str, n: int = 80) -> str:
    """``text`` cut to ``n`` characters, for error messages."""
    text = str(text)
    return text if len(text) <= n else text[: n - 3] + "..."


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _root_of(cfg_or_cls) -> type:
    return cfg_or_cls if isinstance(cfg_or_cls, type) else type(cfg_or_cls)


def all_keys(cfg_cls=Config) -> list[str]:
    """Every dotted key of a command's config, e.g. ``loss.temperature``."""
    keys = []
    for section, sec_type in _field_types(_root_of(cfg_cls)).items():
        keys += [f"{section}.{k}" for k in _field_types(sec_type)]
    return keys


def _closest(key_: str, options: list[str]) -> str:
    match = difflib.get_close_matches(key_, options, n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Check/convert a YAML or command-line value to the field's declared type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "auto")):
            return None
        return _coerce(value, args[0], name)
    if origin is tuple:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
            except yaml.YAMLError:
                raise ConfigError(f"{name} must be a pair like [0.08, 1.0], got {short(value)}") from None
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(tp)):
            raise ConfigError(f"{name} must be a pair like [0.08, 1.0], got {short(value)}")
        return tuple(_coerce(v, a, name) for v, a in zip(value, typing.get_args(tp)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {short(value)}")
    if tp is int:
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise ConfigError(f"{name} must be an integer, got {short(value)}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be an integer, got {short(value)}") from None
        if not math.isfinite(f) or not f.is_integer():
            raise ConfigError(f"{name} must be an integer, got {short(value)}")
        return int(f)
    if tp is float:
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise ConfigError(f"{name} must be a number, got {short(value)}")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"{name} must be a number, got {short(value)}") from None
    if tp is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"{name} must be a string, got {short(value)}")
        return str(value)
    raise ConfigError(f"{name}: unsupported type {tp}")  # pragma: no cover - programming error


def _copy(cfg):
    root = type(cfg)
    return root(**{s: dataclasses.replace(getattr(cfg, s)) for s in _field_types(root)})


def config_from_flat(flat: dict[str, Any], base=None, cls=Config):
    """Apply {dotted key: value} on top of ``base`` (default: ``cls()``); a copy is returned."""
    cfg = _copy(base if base is not None else cls())
    keys = all_keys(type(cfg))
    for dotted, value in flat.items():
        if dotted not in keys:
            raise ConfigError(f"unknown config key '{_clip(dotted)}'{_closest(str(dotted), keys)}")
        section, name = dotted.split(".", 1)
        sec = getattr(cfg, section)
        tp = _field_types(type(sec))[name]
        val = _coerce(value, tp, dotted)
        if (section, name) in _LEGACY_AUTO and val == _LEGACY_AUTO[(section, name)]:
            val = None
        setattr(sec, name, val)
    return cfg


def config_from_dict(d: dict[str, Any], base=None, cls=Config):
    """Build a config from a nested dict (as in YAML), starting from ``base`` or ``cls()``."""
    root = type(base) if base is not None else cls
    flat = {f"{s}.{k}": v for s, sec in _check_sections(d, root).items() for k, v in sec.items()}
    return config_from_flat(flat, base, root)


def _check_sections(d: Any, root: type) -> dict[str, dict]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    sections = list(_field_types(root))
    for s, v in d.items():
        if s not in sections:
            raise ConfigError(f"unknown config section '{_clip(s)}'{_closest(str(s), sections)}")
        if not isinstance(v, dict):
            raise ConfigError(f"config section '{s}' must be a mapping, got {short(v)}")
    return d


def config_to_dict(cfg) -> dict[str, dict[str, Any]]:
    """Nested plain dict of a config (tuples as lists), in declaration order."""
    out = {}
    for s in _field_types(type(cfg)):
        sec = dataclasses.asdict(getattr(cfg, s))
        out[s] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sec.items()}
    return out


MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_ALIASES = 100


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents with many aliases (the "billion laughs" pattern)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise ConfigError(f"the YAML uses more than {MAX_YAML_ALIASES} aliases; write the values out")
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file safely: size-capped, UTF-8, no Python tags, bounded aliases; ConfigError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = p.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0][:200]}") from None
    except RecursionError:
        raise ConfigError(f"{p} nests its values too deeply to be a config") from None


def load_config(path: str | Path, base=None, cls=Config):
    """Load a YAML recipe on top of ``base`` (default: ``cls()``, the pretraining defaults)."""
    return config_from_dict(load_yaml(path) or {}, base, cls)


def save_config(cfg, path: str | Path) -> None:
    """Write ``cfg`` as YAML, headed by a comment naming the simclr version that wrote it (a comment, so the file
    still loads as a recipe with ``--config``)."""
    from simclr import __version__

    head = f"# written by simclr {__version__}\n"
    Path(path).write_text(head + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def apply_overrides(cfg, pairs: list[tuple[str, str]]):
    """Apply command-line ``--section.key value`` pairs (keys may use '-' for '_')."""
    return config_from_flat({k.replace("-", "_"): v for k, v in pairs}, cfg)


def key_help(cls, dotted: str) -> str:
    """The help text of a key of a command's config, e.g. ``key_help(KnnConfig, "knn.k")``."""
    section, name = dotted.split(".", 1)
    return _fields(_field_types(cls)[section])[name].metadata.get("help", "")


def describe(cls=Config) -> str:
    """The keys of a command's config as commented YAML: default value and what each key does."""
    lines = [f"# {(cls.__doc__ or '').strip()}"] if cls.__doc__ else []
    defaults = config_to_dict(cls())
    for s, sec_type in _field_types(cls).items():
        lines.append(f"{s}:")
        for name, f in _fields(sec_type).items():
            value = defaults[s][name]
            text = "auto" if value is None else yaml.safe_dump(value, default_flow_style=True).strip()
            if text.endswith("\n...") or text.endswith("..."):
                text = text.replace("\n...", "").replace("...", "").strip()
            lines.append(f"  {name}: {text}  # {f.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# resolution of "auto" keys and validation


def resolve_augment(a: AugmentConfig, image_size: int) -> AugmentConfig:
    """The augmentation settings for ``image_size`` with every auto key filled; returns a copy."""
    a = dataclasses.replace(a)
    small = small_images(image_size)
    if a.color_strength is None:
        a.color_strength = 0.5 if small else 1.0
    if a.blur_p is None:  # a view that names blur itself wants it, at any size
        named = any("blur" in v.split(",") for v in (a.view1, a.view2))
        a.blur_p = 0.0 if small and not named else 0.5
    return a


def resolve_crop_fraction(fraction: float | None, image_size: int) -> float:
    """``eval.crop_fraction`` auto: the official 87.5% centre crop, except for small images (no crop)."""
    if fraction is not None:
        return float(fraction)
    return 1.0 if small_images(image_size) else 0.875


def resolve_cifar_stem(cifar_stem: bool | None, image_size: int) -> bool:
    """``model.cifar_stem`` auto: the CIFAR stem for small images."""
    return small_images(image_size) if cifar_stem is None else bool(cifar_stem)


def resolve(cfg: Config, image_size: int) -> Config:
    """Fill every auto key of a pretraining config for training at ``image_size`` pixels; returns a copy."""
    cfg = _copy(cfg)
    small = small_images(image_size)
    cfg.data.image_size = image_size
    if cfg.data.num_workers is None:
        cfg.data.num_workers = default_num_workers()
    cfg.augment = resolve_augment(cfg.augment, image_size)
    cfg.model.cifar_stem = resolve_cifar_stem(cfg.model.cifar_stem, image_size)
    if cfg.optim.base_lr is None:
        cfg.optim.base_lr = 1.0 if small else 0.3
    if cfg.optim.weight_decay is None:
        cfg.optim.weight_decay = 1e-4 if small else 1e-6
    return cfg


def _registry(name: str) -> tuple[str, ...]:
    if name in ("arch", "arch_or_empty"):
        from simclr.model.resnet import ARCHITECTURES

        return ARCHITECTURES
    if name == "optim":
        from simclr.optim import OPTIMIZERS

        return OPTIMIZERS
    raise KeyError(name)  # pragma: no cover


def _check_device(value: str) -> str | None:
    if value in ("auto", "cpu", "cuda", "mps"):
        return None
    kind, _, index = value.partition(":")
    if kind in ("cuda", "mps") and index.isdigit():
        return None
    return f"'{_clip(value, 40)}' is not a device; use auto, cpu, cuda, cuda:N or mps"


def _check_value(name: str, v: Any, meta: dict) -> str | None:
    if v is None:
        return None
    if isinstance(v, tuple):
        for item in v:
            err = _check_value(name, item, meta)
            if err:
                return err
        if len(v) == 2 and v[0] > v[1]:
            return f"{name} must satisfy min <= max, got {list(v)}"
        return None
    if isinstance(v, str):
        if meta.get("choices") and v not in meta["choices"]:
            return f"{name} must be one of {', '.join(meta['choices'])}, got '{_clip(v, 40)}'"
        if meta.get("choices_from") == "device":
            err = _check_device(v)
            return f"{name}: {err}" if err else None
        if meta.get("choices_from") == "arch_or_empty" and v == "":
            return None
        if meta.get("choices_from"):
            options = _registry(meta["choices_from"])
            if v not in options:
                return f"{name} '{_clip(v, 40)}' is unknown; choose one of {', '.join(options)}{_closest(v, list(options))}"
        if "\x00" in v:
            return f"{name} must not contain NUL characters"
        return None
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return f"{name} must be a finite number, got {v}"
    lo, hi, gt, lt = meta.get("lo"), meta.get("hi"), meta.get("gt"), meta.get("lt")
    if lo is not None and v < lo:
        return f"{name} must be >= {_num(lo)}, got {_num(v)}"
    if gt is not None and v <= gt:
        return f"{name} must be > {_num(gt)}, got {_num(v)}"
    if hi is not None and v > hi:
        return f"{name} must be <= {_num(hi)}, got {_num(v)}"
    if lt is not None and v >= lt:
        return f"{name} must be < {_num(lt)}, got {_num(v)}"
    return None


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def section_errors(sec, name: str) -> list[str]:
    """Messages for every invalid value of one config section (``name`` prefixes the keys)."""
    errs = []
    for fname, f in _fields(type(sec)).items():
        err = _check_value(f"{name}.{fname}", getattr(sec, fname), dict(f.metadata))
        if err:
            errs.append(err)
    return errs


def check_section(sec, name: str) -> None:
    """Raise ConfigError for any invalid value of one section (for components built from a section)."""
    errs = section_errors(sec, name)
    if errs:
        raise ConfigError("; ".join(errs))


def validate(cfg) -> None:
    """Raise ConfigError naming every invalid value of a command's config, before any work starts."""
    errs: list[str] = []
    for s in _field_types(type(cfg)):
        errs += section_errors(getattr(cfg, s), s)
    errs += _cross_checks(cfg)
    if errs:
        raise ConfigError("; ".join(errs))


def _cross_checks(cfg) -> list[str]:
    """Rules that involve more than one key."""
    errs = []
    if isinstance(cfg, Config):
        if not cfg.train.out:
            errs.append("train.out must name a run folder")
        if cfg.train.resume and cfg.train.overwrite:
            errs.append("give --resume (continue the run) or --overwrite (replace it), not both")
        if cfg.loss.semi_hard and cfg.loss.name == "nt_xent":
            errs.append("loss.semi_hard applies to nt_logistic and margin_triplet (NT-Xent weighs every negative by its "
                        "hardness already); set loss.name or drop loss.semi_hard")
        if cfg.loss.name == "supervised" and cfg.head.num_layers != 0:
            errs.append("loss.name supervised classifies h and has no projection head: set head.num_layers 0")
        if cfg.loss.name == "supervised" and cfg.train.chunk_size:
            errs.append("train.chunk_size (the gradient-cached contrastive step) does not apply to loss.name supervised; set it to 0")
    if hasattr(cfg, "encoder") and isinstance(cfg.encoder, EncoderSource):
        e = cfg.encoder
        needs_checkpoint = isinstance(cfg, (EmbedConfig, ExportConfig))
        if needs_checkpoint and not e.checkpoint:
            errs.append("--checkpoint RUN is required (a run folder or checkpoint.pt)")
        elif not needs_checkpoint and bool(e.checkpoint) == bool(e.random_init):
            errs.append("give exactly one of --checkpoint RUN and --random-init")
    if isinstance(cfg, (KnnConfig, LinearConfig, FinetuneConfig)):
        if not cfg.data.path or not cfg.data.val_path:
            errs.append("--train-data and --test-data are required")
    if isinstance(cfg, (EmbedConfig, AnalyzeConfig)) and not cfg.data.path:
        errs.append("--data is required")
    if isinstance(cfg, (EmbedConfig, ExportConfig, AnalyzeConfig)) and not cfg.eval.out:
        errs.append("--out is required")
    if isinstance(cfg, ViewsConfig):
        if not cfg.data.path:
            errs.append("--data is required")
        if not cfg.views.out:
            errs.append("--out is required (a folder for views.png and views.npy)")
    if isinstance(cfg, (FinetuneConfig, DistillConfig)) and cfg.eval.batch_size < 2:
        errs.append(f"{'fine-tuning' if isinstance(cfg, FinetuneConfig) else 'the student'} trains BatchNorm layers on batch "
                    f"statistics and needs --batch-size 2 or more, got {cfg.eval.batch_size}")
    if isinstance(cfg, FinetuneConfig) and cfg.finetune.from_head_layer and not cfg.encoder.checkpoint:
        errs.append("--from-head-layer needs --checkpoint (a random head has nothing to offer)")
    return errs
