"""Command line: parses arguments and dispatches; the work lives in the library modules.

    simclr pretrain --data PATH [--config FILE.yaml] [--section.key VALUE ...]
    simclr knn (--checkpoint RUN | --random-init --arch A --width W) --train-data P --test-data P [--json]
    simclr linear|finetune (--checkpoint RUN | --random-init ...) --train-data P --test-data P [--json]
    simclr embed --checkpoint RUN --data P --out DIR [--projection]
    simclr export --checkpoint RUN --format safetensors|torchvision|onnx --out FILE
    simclr analyze (--checkpoint RUN | --random-init ...) --data P --out DIR
    simclr demo [--out DIR]

User errors (bad config, missing data, unusable checkpoint) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]

# Short flags of `pretrain` and the config keys they set.
SHORTCUTS = {
    "data": "data.path",
    "arch": "model.arch",
    "width": "model.width",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "out": "train.out",
    "device": "train.device",
    "seed": "train.seed",
}


class UsageError(ValueError):
    pass


def _pairs(rest: list[str]) -> list[tuple[str, str]]:
    """['--loss.temperature', '0.2', '--a.b=c'] -> [('loss.temperature', '0.2'), ('a.b', 'c')]."""
    pairs, i = [], 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise UsageError(f"unexpected argument {tok!r}; config keys are given as --section.key VALUE")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and not _is_number(rest[i + 1])):
                raise UsageError(f"{tok} needs a value")
            val = rest[i + 1]
            i += 2
        if "." not in key:
            raise UsageError(f"unknown option --{key}; config keys look like --section.key (see `simclr pretrain --help`)")
        pairs.append((key, val))
    return pairs


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _pretrain_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "pretrain",
        help="SimCLR pretraining",
        description="Pretrain an encoder with SimCLR. Any config key can be set as --section.key VALUE "
        "(e.g. --loss.temperature 0.2, --augment.blur false); run `simclr config` to list them.",
    )
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument("--data", help="image folder, cifar10, cifar100 or synthetic")
    p.add_argument("--arch", help="resnet18/34/50/101/152")
    p.add_argument("--width", help="width multiplier, e.g. 1, 2, 4, 0.25")
    p.add_argument("--epochs")
    p.add_argument("--batch-size", dest="batch_size")
    p.add_argument("--out", help="run folder")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    return p


def _knn_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("knn", help="weighted kNN accuracy of an encoder's h")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="run folder or checkpoint.pt")
    src.add_argument("--random-init", action="store_true", help="a randomly initialised encoder (baseline)")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--train-data", required=True)
    p.add_argument("--test-data", required=True)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=0, help="input size (default: the checkpoint's, or the data's)")
    p.add_argument("--max-per-class", type=int, default=0)
    p.add_argument("--data-dir", default="")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p


def _encoder_args(p: argparse.ArgumentParser, random_init: bool = True) -> None:
    if random_init:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--checkpoint", help="run folder or checkpoint.pt")
        src.add_argument("--random-init", action="store_true", help="a randomly initialised encoder (baseline)")
    else:
        p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt")
    p.add_argument("--arch", default="resnet18", help="with --random-init")
    p.add_argument("--width", type=float, default=1.0, help="with --random-init")
    p.add_argument("--image-size", type=int, default=0, help="input size (default: the checkpoint's, or the data's)")
    p.add_argument("--max-per-class", type=int, default=0)
    p.add_argument("--data-dir", default="")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)


def _eval_parsers(sub) -> None:
    p = sub.add_parser("linear", help="linear evaluation of the frozen encoder (SGD or L-BFGS)")
    _encoder_args(p)
    p.add_argument("--train-data", required=True)
    p.add_argument("--test-data", required=True)
    p.add_argument("--solver", choices=("sgd", "lbfgs"), default="sgd")
    p.add_argument("--epochs", type=int, default=90, help="sgd: epochs")
    p.add_argument("--lr", type=float, default=0.1, help="sgd: base lr, scaled by B/256")
    p.add_argument("--grid", type=int, default=12, help="lbfgs: number of L2 strengths tried in [1e-6, 1e5]")
    p.add_argument("--val-fraction", type=float, default=0.2, help="lbfgs: validation share of the training data")
    p.add_argument("--out", help="folder for linear.json (default: the run folder)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")

    f = sub.add_parser("finetune", help="semi-supervised fine-tuning on a fraction of the labels")
    _encoder_args(f)
    f.add_argument("--train-data", required=True)
    f.add_argument("--test-data", required=True)
    f.add_argument("--label-fraction", type=float, default=0.1)
    f.add_argument("--epochs", type=int, default=30)
    f.add_argument("--lr", type=float, default=0.05, help="base lr, scaled by B/256")
    f.add_argument("--from-head-layer", type=int, default=0, help="SimCLRv2: classify from this projection-head layer")
    f.add_argument("--out", help="folder for results and the chosen label list (default: RUN/finetune-FRACTION)")
    f.add_argument("--json", action="store_true")

    e = sub.add_parser("embed", help="write the representation of every image (embeddings.npy + index.csv)")
    _encoder_args(e, random_init=False)
    e.add_argument("--data", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--projection", action="store_true", help="write z = g(h) instead of h")

    x = sub.add_parser("export", help="export the encoder alone")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--format", required=True, choices=("safetensors", "torchvision", "onnx"))
    x.add_argument("--out", required=True)

    a = sub.add_parser("analyze", help="alignment, uniformity, rank, collapse check, t-SNE map, neighbours")
    _encoder_args(a)
    a.add_argument("--data", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--max-images", type=int, default=2000)
    a.add_argument("--json", action="store_true")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2), like every other usage error of simclr."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simclr", description="SimCLR: contrastive self-supervised learning of visual representations")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _pretrain_parser(sub)
    _knn_parser(sub)
    _eval_parsers(sub)
    d = sub.add_parser("demo", help="pretrain on a synthetic set and compare kNN with a random encoder")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--device", default="auto")
    c = sub.add_parser("config", help="print the default config (or a recipe) as YAML")
    c.add_argument("--config", help="YAML recipe to print resolved on top of the defaults")
    return parser


def _cmd_pretrain(args, rest) -> int:
    from simclr import config as C
    from simclr.engine import pretrain

    cfg = C.load_config(args.config) if args.config else C.Config()
    flat = {SHORTCUTS[k]: v for k, v in vars(args).items() if k in SHORTCUTS and v is not None}
    cfg = C.config_from_flat(flat, cfg)
    cfg = C.apply_overrides(cfg, _pairs(rest))
    if args.resume:
        cfg.train.resume = True
    if args.strict:
        cfg.data.strict = True
    run = pretrain(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"done: {run}")
    return 0


def _cmd_knn(args) -> int:
    from simclr.eval import knn_evaluate

    res = knn_evaluate(
        checkpoint=args.checkpoint, arch=args.arch, width=args.width, train_spec=args.train_data, test_spec=args.test_data,
        k=args.k, temperature=args.temperature, image_size=args.image_size, max_per_class=args.max_per_class,
        data_dir=args.data_dir, batch_size=args.batch_size, device=args.device, seed=args.seed,
    )
    print(f"kNN (k={args.k}, T={args.temperature}): top1 {res['top1']:.4f}  top5 {res['top5']:.4f}")
    if args.json:
        print(json.dumps(res))
    return 0


def _prepare(args, train_spec: str, test_spec: str | None = None):
    """Encoder, image size, device and data for the evaluation commands."""
    from simclr.engine import pick_device
    from simclr.eval import check_same_classes, encoder_for, load_labelled

    size = args.image_size
    if args.checkpoint:
        encoder, size, meta = encoder_for(args.checkpoint, args.arch, args.width, args.image_size, 0, args.seed)
    train = load_labelled(train_spec, size, args.data_dir, args.max_per_class)
    test = None
    if test_spec:
        test = load_labelled(test_spec, size or train.side, args.data_dir, args.max_per_class)
        check_same_classes(train, test)
    if not args.checkpoint:
        encoder, size, meta = encoder_for(None, args.arch, args.width, args.image_size, train.side, args.seed)
    return encoder, size, meta, pick_device(args.device), train, test


def _finish(args, name: str, res: dict, default_out: str | None) -> int:
    from simclr.eval import write_result

    out = getattr(args, "out", None) or default_out
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_result(out, name, res)
    print(f"{name}: top1 {res['top1']:.4f}  top5 {res['top5']:.4f}")
    if args.json:
        print(json.dumps(res))
    return 0


def _cmd_linear(args) -> int:
    from simclr.probe import linear_eval_lbfgs, linear_eval_sgd

    encoder, size, meta, dev, train, test = _prepare(args, args.train_data, args.test_data)
    encoder = encoder.to(dev).to(memory_format=torch_channels_last())
    if args.solver == "lbfgs":
        res = linear_eval_lbfgs(encoder, train, test, size, dev, num_grid=args.grid, val_fraction=args.val_fraction, seed=args.seed)
    else:
        res = linear_eval_sgd(encoder, train, test, size, dev, epochs=args.epochs, batch_size=args.batch_size, base_lr=args.lr, seed=args.seed)
    res.update(encoder=str(args.checkpoint or "random-init"), image_size=size, num_train=len(train), num_test=len(test))
    return _finish(args, "linear", res, args.checkpoint if args.checkpoint and Path(args.checkpoint).is_dir() else None)


def _cmd_finetune(args) -> int:
    from simclr.checkpoint import load_pretrained_head
    from simclr.finetune import Classifier, finetune

    if not 0 < args.label_fraction <= 1:
        raise UsageError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    encoder, size, meta, dev, train, test = _prepare(args, args.train_data, args.test_data)
    head = None
    if args.from_head_layer:
        if not args.checkpoint:
            raise UsageError("--from-head-layer needs --checkpoint (a random head has nothing to offer)")
        head = load_pretrained_head(args.checkpoint)
        if not 0 < args.from_head_layer <= len(head.layers):
            raise UsageError(f"--from-head-layer must be in 1..{len(head.layers)} for this checkpoint")
    torch_seed(args.seed)  # the classifier's initialisation
    model = Classifier(encoder, len(train.classes), head, args.from_head_layer)
    if args.checkpoint and Path(args.checkpoint).is_dir():
        default_out = str(Path(args.checkpoint) / f"finetune-{args.label_fraction:g}")
    else:
        default_out = f"runs/finetune-random-{args.label_fraction:g}"
    out = args.out or default_out
    res = finetune(model, train, test, size, dev, args.label_fraction, epochs=args.epochs, batch_size=args.batch_size,
                   base_lr=args.lr, seed=args.seed, out=out)
    res.update(encoder=str(args.checkpoint or "random-init"), from_head_layer=args.from_head_layer, image_size=size)
    args.out = out
    return _finish(args, "finetune", res, out)


def _cmd_embed(args) -> int:
    from simclr.checkpoint import load_pretrained_head
    from simclr.data import load_dataset
    from simclr.engine import pick_device
    from simclr.eval import encoder_for
    from simclr.export import embed_dataset, write_embeddings

    encoder, size, meta = encoder_for(args.checkpoint, args.arch, args.width, args.image_size, 0, args.seed)
    ds = load_dataset(args.data, size, args.data_dir, args.max_per_class)
    head = load_pretrained_head(args.checkpoint) if args.projection else None
    emb = embed_dataset(encoder, ds, size, pick_device(args.device), head, args.batch_size)
    write_embeddings(args.out, emb, ds.names(args.data), ds.labels, ds.classes)
    print(f"wrote {emb.shape[0]} x {emb.shape[1]} {'projections z' if head else 'representations h'} to {args.out}")
    return 0


def _cmd_export(args) -> int:
    from simclr.eval import encoder_for
    from simclr.export import export_encoder

    encoder, size, meta = encoder_for(args.checkpoint, "", 1.0, 0, 0)
    path = export_encoder(encoder, args.format, args.out, size, meta)
    print(f"wrote {args.format} encoder ({meta['arch']}, width {meta['width']}, input {size}px in [0, 1]) to {path}")
    return 0


def _cmd_analyze(args) -> int:
    from simclr.analyze import analyze
    from simclr.checkpoint import load_pretrained_head
    from simclr.data import load_dataset
    from simclr.engine import pick_device
    from simclr.eval import encoder_for

    encoder, size = None, args.image_size
    if args.checkpoint:  # the checkpoint fixes the input size before the data is loaded
        encoder, size, _ = encoder_for(args.checkpoint, args.arch, args.width, args.image_size, 0, args.seed)
    ds = load_dataset(args.data, size, args.data_dir, args.max_per_class)
    if encoder is None:
        encoder, size, _ = encoder_for(None, args.arch, args.width, args.image_size, ds.side, args.seed)
    head = load_pretrained_head(args.checkpoint) if args.checkpoint else None
    res = analyze(encoder, head, ds, size, pick_device(args.device), args.out, max_images=args.max_images, seed=args.seed)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "std_per_dim_h"}))
    return 0


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def torch_channels_last():
    import torch

    return torch.channels_last


def _cmd_demo(args) -> int:
    from simclr.demo import run_demo

    res = run_demo(out=args.out, device=args.device, epochs=args.epochs)
    print(json.dumps(res))
    return 0


def _cmd_config(args) -> int:
    import yaml

    from simclr import config as C

    cfg = C.load_config(args.config) if args.config else C.Config()
    print(yaml.safe_dump(C.config_to_dict(cfg), sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    from simclr.checkpoint import CheckpointError
    from simclr.config import ConfigError
    from simclr.data import DataError
    from simclr.engine import Interrupted

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command != "pretrain" and rest:
            raise UsageError(f"unrecognised arguments: {' '.join(rest)}")
        if args.command == "pretrain":
            return _cmd_pretrain(args, rest)
        if args.command == "knn":
            return _cmd_knn(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command in ("linear", "finetune", "embed", "export", "analyze"):
            return globals()[f"_cmd_{args.command}"](args)
        return _cmd_config(args)
    except (ConfigError, DataError, CheckpointError, UsageError, FloatingPointError) as e:
        print(f"simclr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"simclr {args.command}: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
