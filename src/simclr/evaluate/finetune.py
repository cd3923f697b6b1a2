"""Semi-supervised fine-tuning (paper section 6.2; SimCLRv2 section 2).

A class-balanced fraction of the labels (deterministic for a seed; the chosen files are saved) trains
the whole network, initialised from the pretrained encoder (or randomly, the supervised baseline):
SGD with Nesterov momentum 0.9, lr 0.05 x B/256, no weight decay, cosine schedule, random crop + flip
only. The classifier sits on h or, as in SimCLRv2, on the output of the first k projection-head
layers (``from_head_layer=k``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from simclr.checkpoint import atomic_write
from simclr.config import ConfigError, validate
from simclr.evaluate.features import extract_features
from simclr.evaluate.inputs import prepare, write_result
from simclr.evaluate.knn import topk_accuracy
from simclr.evaluate.linear import steps_per_epoch, train_classifier
from simclr.optim import scaled_lr
from simclr.runtime import seeded

__all__ = ["balanced_subset", "Classifier", "FINETUNED", "finetune", "finetune_evaluate", "load_finetuned", "read_labels",
           "save_finetuned", "write_labels"]

FINETUNED = "finetuned.safetensors"  # the fine-tuned (or distilled) network in its output folder
# The paper's schedules (30-60 epochs at batch 4096) are hundreds of steps on ImageNet's 1% and 10%; on a small
# labelled set the same epochs at batch 256 are a few dozen. On the CIFAR-10 subset's 1,000 labels, 120 steps gave
# 27.6% and 900 gave 47.1% (docs/benchmarks.md): below this many steps finetune says so.
FEW_STEPS = 500


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of ``fraction`` of every class (rounded, at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        n = max(1, int(round(fraction * len(idx))))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(keep).sort().values


class Classifier(nn.Module):
    """Encoder (+ the first k layers of the projection head) + a linear layer: (B, 3, S, S) -> logits."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: nn.Module | None = None, head_layers: int = 0):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.head_layers = head_layers
        dim = encoder.num_features
        if head is not None and head_layers:
            last = head.layers[head_layers - 1][0]
            dim = last.out_features
        self.fc = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        if self.head is not None and self.head_layers:
            h = self.head(h, upto=self.head_layers)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> logits (B, num_classes)."""
        return self.fc(self.features(x))

    def describe(self) -> dict:
        """What rebuilds this network (``load_finetuned``): the encoder's keys, the head's and the classes."""
        head = self.head.config() if self.head is not None and self.head_layers else None
        return {"encoder": self.encoder.arch_config(), "head": head, "head_layers": self.head_layers if head else 0,
                "num_classes": self.fc.out_features}


def save_finetuned(path: str | Path, model: Classifier, classes: list[str], image_size: int,
                   crop_fraction: float | None, extra: dict | None = None) -> None:
    """Write the whole network (encoder, the head layers it uses, classifier) as safetensors with what rebuilds it
    (``Classifier.describe``), its classes in label order and its input size in the metadata."""
    from simclr.checkpoint import save_encoder

    meta = {**model.describe(), "classes": list(classes), "image_size": int(image_size), "crop_fraction": crop_fraction,
            **(extra or {})}
    save_encoder(model, path, meta)


def load_finetuned(folder: str | Path) -> tuple[Classifier, dict]:
    """The network that ``simclr finetune`` or ``simclr distill`` saved in ``folder`` (eval mode) and its metadata
    (classes, image_size, crop_fraction, ...). CheckpointError (one line) when there is none or it is damaged."""
    import json

    from safetensors import safe_open

    from simclr.checkpoint import CheckpointError
    from simclr.model.head import ProjectionHead
    from simclr.model.resnet import build_encoder

    folder = Path(folder)
    path = folder / FINETUNED if folder.is_dir() else folder
    if not path.is_file():
        raise CheckpointError(f"no fine-tuned network at {folder} (expected {FINETUNED}, which simclr finetune and "
                              "simclr distill write into their output folder)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["simclr"])
            weights = {k: f.get_tensor(k) for k in f.keys()}
        enc = meta["encoder"]
        encoder = build_encoder(**enc)
        head = None
        if meta.get("head"):
            h = meta["head"]
            head = ProjectionHead(encoder.num_features, **h)
        model = Classifier(encoder, int(meta["num_classes"]), head, int(meta.get("head_layers", 0)))
        model.load_state_dict(weights)
        size, classes, crop = meta["image_size"], meta["classes"], meta.get("crop_fraction")
        if not (isinstance(size, int) and 8 <= size <= 4096):
            raise ValueError(f"image_size {size!r}")
        if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes) and len(classes) == model.fc.out_features):
            raise ValueError(f"{len(classes) if isinstance(classes, list) else classes!r} class names for "
                             f"{model.fc.out_features} outputs")
        if crop is not None and not (isinstance(crop, (int, float)) and 0 < crop <= 1):
            raise ValueError(f"crop_fraction {crop!r}")
    except CheckpointError:
        raise
    except Exception as e:  # a damaged or foreign file: safetensors, JSON, key or shape errors
        raise CheckpointError(f"{path} is not a network saved by simclr finetune/distill: {str(e).splitlines()[0][:200]}") from None
    return model.eval(), meta


def finetune(
    model: Classifier,
    train,
    test,
    image_size: int,
    device: torch.device,
    label_fraction: float,
    epochs: int = 30,
    batch_size: int = 256,
    base_lr: float = 0.05,
    seed: int = 0,
    out: str | Path | None = None,
    log=print,
    crop_fraction: float | None = None,
) -> dict:
    """Fine-tune ``model`` on a balanced ``label_fraction`` of ``train``; top-1/top-5 on ``test``.

    With ``out``, the chosen images are listed in OUT/finetune_labels.txt once the run succeeded (see
    ``write_labels``). Test images are centre views of ``crop_fraction`` (None: auto). The batch is cut to the labelled subset's size; BatchNorm trains on batch
    statistics, so a batch of one image is refused (ConfigError)."""
    subset = balanced_subset(train.labels, label_fraction, seed)
    data = train.subset(subset)
    n = len(data)
    bs = min(batch_size, n)
    if bs < 2:  # the command's config refuses --batch-size 1 up front; this is the batch cut to the labelled images
        raise ConfigError(f"fine-tuning trains BatchNorm layers on batch statistics and needs batches of at least 2 images, "
                          f"got {bs} (--batch-size {batch_size}, {n} labelled images)")
    model = model.to(device).to(memory_format=torch.channels_last)
    lr = scaled_lr(base_lr, bs, "linear")
    steps = epochs * steps_per_epoch(n, bs)
    if steps < FEW_STEPS:
        log(f"finetune: {steps} steps in all ({n} labelled images in batches of {bs}, {epochs} epoch(s)) are few; a smaller "
            f"--batch-size or more --epochs usually fine-tunes better (docs/benchmarks.md, SimCLRv2 section)")
    model.train()
    train_classifier(model, list(model.parameters()), data, image_size, device, epochs, bs, lr, seed, log, "finetune")
    model.eval()
    logits = extract_features(model, test, image_size, device, bs, crop_fraction=crop_fraction)
    res = topk_accuracy(logits, test.labels)
    res.update(label_fraction=label_fraction, num_labelled=n, epochs=epochs, batch_size=bs, lr=lr)
    if out is not None:
        names = train.names("train")
        write_labels(Path(out) / "finetune_labels.txt", [(names[i], int(train.labels[i])) for i in subset.tolist()])
        save_finetuned(Path(out) / FINETUNED, model.cpu(), list(train.classes), image_size, crop_fraction,
                       {"label_fraction": label_fraction, "top1": res["top1"]})
        model.to(device)
    return res


def write_labels(path: str | Path, rows: list[tuple[str, int]]) -> None:
    """One ``path<TAB>label`` line per image, written atomically.

    File names are written as their original bytes (UTF-8 with ``surrogateescape``: a name that is not
    valid UTF-8 comes back byte for byte when the file is read with the same error handler); a name
    holding a tab, a line break or a double quote is quoted as in CSV (Python's ``csv`` "excel-tab"
    dialect reads every line back)."""
    import csv

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            w = csv.writer(f, dialect="excel-tab", lineterminator="\n")
            w.writerows(rows)

    atomic_write(path, write)


def read_labels(path: str | Path) -> list[tuple[str, int]]:
    """The ``(name, label)`` rows of a file ``write_labels`` wrote (names byte for byte, as written)."""
    import csv

    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return [(row[0], int(row[1])) for row in csv.reader(f, dialect="excel-tab") if row]


def finetune_evaluate(cfg, log=print) -> dict:
    """``simclr finetune`` from a ``simclr.config.FinetuneConfig``: results and the chosen label list go to
    eval.out (default RUN/finetune-FRACTION, or runs/finetune-random-FRACTION for a random encoder)."""
    ft, ev = cfg.finetune, cfg.eval

    def output(run: Path | None) -> Path:
        if ev.out:
            return Path(ev.out)
        return run / f"finetune-{ft.label_fraction:g}" if run else Path(f"runs/finetune-random-{ft.label_fraction:g}")

    validate(cfg)
    inp = prepare(cfg, labelled=True, with_test=True, out=output, log=log)  # checks the output folder first
    for name in (FINETUNED, "finetune.json", "finetune_labels.txt"):  # found now, not after the training
        if (inp.out / name).is_dir():
            raise ConfigError(f"{inp.out / name} is a folder where finetune writes a file; choose another --out")
    head = None
    if ft.from_head_layer:
        head = inp.run.head
        if not head.layers:
            raise ConfigError("finetune.from_head_layer needs a projection head, and this checkpoint has none "
                              "(head.num_layers 0); use --from-head-layer 0")
        if not ft.from_head_layer <= len(head.layers):
            raise ConfigError(f"finetune.from_head_layer must be in 1..{len(head.layers)} for this checkpoint")
    with seeded(ev.seed):  # the classifier's initialisation
        model = Classifier(inp.encoder, len(inp.data.classes), head, ft.from_head_layer)
    out = inp.out
    res = finetune(model, inp.data, inp.test, inp.image_size, inp.device, ft.label_fraction, epochs=ft.epochs,
                   batch_size=ev.batch_size, base_lr=ft.lr, seed=ev.seed, out=out, log=log, crop_fraction=inp.crop_fraction)
    res.update(encoder=inp.name, from_head_layer=ft.from_head_layer, image_size=inp.image_size)
    write_result(out, "finetune", res)
    return res
