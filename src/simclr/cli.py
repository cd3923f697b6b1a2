"""Command line: parses arguments and dispatches; the work lives in the library modules.

    simclr pretrain --data PATH [--config FILE.yaml] [--section.key VALUE ...]
    simclr knn (--checkpoint RUN | --random-init --arch A --width W) --train-data P --test-data P [--json]
    simclr demo [--out DIR]

User errors (bad config, missing data, unusable checkpoint) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simclr", description="SimCLR: contrastive self-supervised learning of visual representations")
    sub = parser.add_subparsers(dest="command", required=True)
    _pretrain_parser(sub)
    _knn_parser(sub)
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
    run = pretrain(cfg)
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
        return _cmd_config(args)
    except (ConfigError, DataError, CheckpointError, UsageError, FloatingPointError) as e:
        print(f"simclr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
