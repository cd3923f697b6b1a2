"""Distillation with unlabelled images (SimCLRv2, arXiv 2006.10029, section 2.3 and eq. 3).

A fine-tuned network (the teacher, saved by ``simclr finetune``) labels every image of an unlabelled set
with its softened predictions; a student trained from scratch learns them:

    L = (1 - w) * mean_x [ -sum_y P_T(y | x; t) log P_S(y | x; t) ]  +  w * mean_(x, y) labelled [ -log P_S(y | x) ]

P(y | x; t) = softmax(logits / t). The teacher sees the student's own view of each image (random crop and
flip, the only augmentation, as in the paper), in eval mode. ``w`` (``distill.labels_weight``, the paper's
1 - alpha) mixes in the cross-entropy on the images the teacher was fine-tuned with (its finetune_labels.txt),
0 by default: the paper's main results use the distillation term alone. The terms are means over the batch
(and over its labelled images), where the paper writes sums over the data set.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from simclr.config import ConfigError, validate
from simclr.data import DataError, load_dataset
from simclr.data.errors import printable
from simclr.evaluate.features import extract_features
from simclr.evaluate.finetune import FINETUNED, Classifier, load_finetuned, read_labels, save_finetuned
from simclr.evaluate.inputs import check_output, write_result
from simclr.evaluate.knn import topk_accuracy
from simclr.evaluate.linear import train_classifier
from simclr.model.resnet import build_encoder
from simclr.optim import scaled_lr
from simclr.runtime import pick_device, seeded

__all__ = ["distill", "distill_loss", "distill_command"]


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, labels: torch.Tensor | None = None,
                 labelled: torch.Tensor | None = None, labels_weight: float = 0.0) -> torch.Tensor:
    """SimCLRv2's eq. 3 for one batch (see the module docstring); a 0-d tensor.

    student, teacher: logits (B, C); labels: (B,) class indices; labelled: (B,) bool, the images whose label
    may be used (required when ``labels_weight`` > 0; a batch without one adds no label term).
    """
    t = float(temperature)
    up = torch.promote_types(student.dtype, torch.float32)  # half-precision logits are summed in float32 at least
    student, teacher = student.to(up), teacher.to(up)
    soft = -(F.softmax(teacher / t, dim=1) * F.log_softmax(student / t, dim=1)).sum(1).mean()
    if labels_weight <= 0:
        return soft
    if labels is None or labelled is None:
        raise ValueError("labels_weight > 0 needs labels and the mask of labelled images")
    hard = F.cross_entropy(student[labelled], labels[labelled]) if labelled.any() else student.sum() * 0
    return (1 - labels_weight) * soft + labels_weight * hard


def _in_teacher_classes(ds, classes: list[str], spec: str):
    """``ds`` with labels indexing the teacher's ``classes`` (by name); DataError for a class the teacher lacks."""
    unknown = [c for c in ds.classes if c not in set(classes)]
    if unknown:
        raise DataError(f"{printable(spec)} has classes the teacher does not know: {', '.join(unknown[:5])}")
    index = {c: i for i, c in enumerate(classes)}
    return dataclasses.replace(ds, labels=torch.tensor([index[c] for c in ds.classes], dtype=torch.long)[ds.labels],
                               classes=list(classes))


def _labelled_mask(teacher_dir: Path, data, spec: str) -> torch.Tensor:
    """(N,) bool: the images of ``data`` listed in the teacher's finetune_labels.txt (matched by file name)."""
    path = teacher_dir / "finetune_labels.txt"
    if not path.is_file():
        raise ConfigError(f"distill.labels_weight > 0 uses the images the teacher was fine-tuned with, listed in {path}, "
                          "which is missing")
    listed = {name for name, _ in read_labels(path)}
    names = data.names("train")
    mask = torch.tensor([n in listed for n in names], dtype=torch.bool)
    if not mask.any():
        raise DataError(f"none of the teacher's {len(listed)} labelled images is in {printable(spec)} "
                        "(distill.labels_weight needs the data the teacher was fine-tuned on)")
    return mask


def distill(teacher: Classifier, student: Classifier, data, test, image_size: int, device: torch.device, epochs: int,
            batch_size: int, base_lr: float, temperature: float = 1.0, labels_weight: float = 0.0,
            labelled: torch.Tensor | None = None, seed: int = 0, crop_fraction: float | None = None, log=print) -> dict:
    """Train ``student`` on the teacher's predictions over ``data`` (crop + flip views); top-1/top-5 of the student
    (and of the teacher, for comparison) on ``test``. SGD with Nesterov momentum, lr ``base_lr`` x B/256, cosine.

    teacher, student: images (B, 3, S, S) -> logits (B, C) over the same classes; data, test: ``ImageSet``s (test
    labelled in the teacher's class order); labelled: (len(data),) bool, the images whose label the loss may use.
    The teacher stays in eval mode and is not changed."""
    teacher = teacher.to(device).to(memory_format=torch.channels_last).eval()
    student = student.to(device).to(memory_format=torch.channels_last).train()
    bs = min(batch_size, len(data))
    if bs < 2:  # the command's config refuses --batch-size 1 up front; this is the batch cut to the images
        raise ConfigError(f"the student trains BatchNorm layers on batch statistics and needs batches of at least 2 images, got {bs}")
    labels = data.labels if labels_weight > 0 else None

    def objective(logits, x, idx):
        with torch.no_grad():
            target = teacher(x)
        if labels is None:
            return distill_loss(logits, target, temperature)
        return distill_loss(logits, target, temperature, labels[idx].to(device), labelled[idx].to(device), labels_weight)

    lr = scaled_lr(base_lr, bs, "linear")
    train_classifier(student, list(student.parameters()), data, image_size, device, epochs, bs, lr, seed, log, "distill",
                     objective=objective)
    student.eval()
    res = topk_accuracy(extract_features(student, test, image_size, device, bs, crop_fraction=crop_fraction), test.labels)
    ref = topk_accuracy(extract_features(teacher, test, image_size, device, bs, crop_fraction=crop_fraction), test.labels)
    res.update(teacher_top1=ref["top1"], teacher_top5=ref["top5"], epochs=epochs, batch_size=bs, lr=lr,
               temperature=temperature, labels_weight=labels_weight, num_images=len(data))
    return res


def distill_command(cfg, log=print) -> dict:
    """``simclr distill`` from a ``simclr.config.DistillConfig``: the student and distill.json go to eval.out."""
    validate(cfg)
    d, ev = cfg.distill, cfg.eval
    if not d.teacher:
        raise ConfigError("distill needs --teacher, the output folder of simclr finetune (it holds finetuned.safetensors)")
    if not ev.out:
        raise ConfigError("distill needs --out, the folder for the student")
    out = check_output(ev.out, "dir")
    teacher_dir = Path(d.teacher)
    if teacher_dir.is_file():  # the network file itself: its folder holds the rest (finetune_labels.txt)
        teacher_dir = teacher_dir.parent
    if out.resolve() == teacher_dir.resolve():
        raise ConfigError("--out is the teacher's folder; the student needs a folder of its own")
    for name in (FINETUNED, "distill.json", "finetune.json"):
        if (out / name).exists():
            raise ConfigError(f"{printable(str(out))} already holds a network ({name}); choose another --out or remove it")
    teacher, meta = load_finetuned(teacher_dir)
    image_size = int(meta["image_size"])
    classes = list(meta["classes"])
    device = pick_device(ev.device)
    data_cfg = dataclasses.replace(cfg.data, image_size=image_size)
    data = load_dataset(data_cfg.path, data_cfg)
    if not data_cfg.val_path:
        raise ConfigError("distill needs --test-data, labelled images of the teacher's classes")
    test = load_dataset(data_cfg.val_path, data_cfg)
    if not test.has_labels:
        raise DataError(f"{printable(data_cfg.val_path)} has no labels: the test data needs one subfolder per class")
    test = _in_teacher_classes(test, classes, data_cfg.val_path)
    labelled = None
    if d.labels_weight > 0:
        if not data.has_labels:
            raise DataError(f"distill.labels_weight > 0 needs {printable(data_cfg.path)} labelled with the teacher's classes")
        data = _in_teacher_classes(data, classes, data_cfg.path)
        labelled = _labelled_mask(teacher_dir, data, data_cfg.path)
    enc = {**meta["encoder"], "arch": d.arch or meta["encoder"]["arch"], "width": d.width or meta["encoder"]["width"]}
    with seeded(ev.seed):
        student = Classifier(build_encoder(**enc), len(classes))
    log(f"distilling {teacher_dir} ({meta['encoder']['arch']} width {meta['encoder']['width']:g}) into {enc['arch']} width "
        f"{enc['width']:g} on {len(data)} images of {printable(data_cfg.path)}")
    res = distill(teacher, student, data, test, image_size, device, d.epochs, ev.batch_size, d.lr, d.temperature,
                  d.labels_weight, labelled, ev.seed, meta.get("crop_fraction"), log)
    res.update(teacher=str(teacher_dir), arch=enc["arch"], width=enc["width"], image_size=image_size)
    save_finetuned(out / FINETUNED, student.cpu(), classes, image_size, meta.get("crop_fraction"),
                   {"distilled_from": str(teacher_dir), "top1": res["top1"]})
    write_result(out, "distill", res)
    return res
