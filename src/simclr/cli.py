"""Command line: parses arguments into a command's typed config and dispatches; the work lives in the library.

    simclr pretrain --data PATH [--config FILE.yaml] [--section.key VALUE ...]
    simclr knn (--checkpoint RUN | --random-init --arch A --width W) --train-data P --test-data P [--json]
    simclr linear|finetune (--checkpoint RUN | --random-init ...) --train-data P --test-data P [--json]
                                  (linear --projection: classify z = g(h) instead of h)
    simclr distill --teacher FT_DIR --data P --test-data P --out DIR [--arch A --width W] [--labels-weight a]
    simclr embed --checkpoint RUN --data P --out DIR [--projection]
    simclr export --checkpoint RUN --format safetensors|torchvision|onnx --out FILE
    simclr analyze (--checkpoint RUN | --random-init ...) --data P --out DIR
    simclr views --data P --out DIR [--n 64] [--config RECIPE.yaml] [any pretrain key]
    simclr ablate STUDY --train-data P --test-data P --out DIR [--seeds K] [any pretrain key]
    simclr import-official CKPT --out RUN [--image-size N]   an official google-research/simclr checkpoint
    simclr config [COMMAND]      every key of a command, its default and what it does
    simclr demo [--out DIR]

Every command except demo takes ``--config FILE.yaml`` and any key of its config as ``--section.key VALUE``;
the short flags below are aliases of keys. User errors (bad values, missing data, unusable checkpoints)
print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["main", "FLAGS"]

# Short flags of each command and the config keys they set. Flags in SWITCHES take no value.
_ENCODER = {"checkpoint": "encoder.checkpoint", "random-init": "encoder.random_init", "arch": "encoder.arch",
            "width": "encoder.width"}
_EVAL = {"image-size": "data.image_size", "max-per-class": "data.max_per_class", "data-dir": "data.data_dir",
         "batch-size": "eval.batch_size", "device": "eval.device", "seed": "eval.seed", "json": "eval.json", "out": "eval.out"}
_TRAIN_TEST = {"train-data": "data.path", "test-data": "data.val_path"}
FLAGS: dict[str, dict[str, str]] = {
    "pretrain": {"data": "data.path", "arch": "model.arch", "width": "model.width", "epochs": "train.epochs",
                 "batch-size": "train.batch_size", "out": "train.out", "device": "train.device", "seed": "train.seed",
                 "resume": "train.resume", "overwrite": "train.overwrite", "strict": "data.strict"},
    "knn": {**_ENCODER, **_EVAL, **_TRAIN_TEST, "k": "knn.k", "temperature": "knn.temperature"},
    "linear": {**_ENCODER, **_EVAL, **_TRAIN_TEST, "solver": "linear.solver", "epochs": "linear.epochs", "lr": "linear.lr",
               "grid": "linear.grid", "val-fraction": "linear.val_fraction", "projection": "linear.projection"},
    "finetune": {**_ENCODER, **_EVAL, **_TRAIN_TEST, "label-fraction": "finetune.label_fraction", "epochs": "finetune.epochs",
                 "lr": "finetune.lr", "from-head-layer": "finetune.from_head_layer"},
    "distill": {**{k: v for k, v in _EVAL.items() if k != "max-per-class"}, "max-per-class": "data.max_per_class",
                "data": "data.path", "test-data": "data.val_path", "teacher": "distill.teacher", "arch": "distill.arch",
                "width": "distill.width", "epochs": "distill.epochs", "lr": "distill.lr",
                "temperature": "distill.temperature", "labels-weight": "distill.labels_weight"},
    "embed": {**_ENCODER, **_EVAL, "data": "data.path", "projection": "embed.projection"},
    "export": {"checkpoint": "encoder.checkpoint", "format": "export.format", "out": "eval.out", "device": "eval.device"},
    "analyze": {**_ENCODER, **_EVAL, "data": "data.path", "max-images": "analyze.max_images"},
}
# views takes pretrain's flags (a pretrain command line works as it is) except those about the run folder.
FLAGS["views"] = {**{f: k for f, k in FLAGS["pretrain"].items() if f not in ("out", "resume", "overwrite")},
                  "out": "views.out", "n": "views.n", "rows": "views.rows", "json": "views.json"}
SWITCHES = {"random-init", "json", "resume", "overwrite", "strict", "projection"}
HELP = {
    "pretrain": "SimCLR pretraining",
    "knn": "weighted kNN accuracy of an encoder's h",
    "linear": "linear evaluation of the frozen encoder (SGD or L-BFGS)",
    "finetune": "semi-supervised fine-tuning on a fraction of the labels",
    "distill": "train a student on a fine-tuned teacher's predictions over unlabelled images (SimCLRv2)",
    "embed": "write the representation of every image (embeddings.npy + index.csv)",
    "export": "export the encoder alone",
    "analyze": "alignment, uniformity, rank, collapse check, t-SNE map, neighbours",
    "views": "the training views of the first images of epoch 0 (views.png, views.npy), exactly as pretrain computes them",
}


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2), like every other usage error of simclr."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _pairs(rest: list[str]) -> list[tuple[str, str]]:
    """['--loss.temperature', '0.2', '--a.b=c'] -> [('loss.temperature', '0.2'), ('a.b', 'c')]."""
    pairs, i = [], 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise UsageError(f"unexpected argument {tok[:80]!r}; config keys are given as --section.key VALUE")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and not _is_number(rest[i + 1])):
                raise UsageError(f"{tok[:80]} needs a value")
            val = rest[i + 1]
            i += 2
        if "." not in key:
            raise UsageError(f"unknown option --{key[:80]}; config keys look like --section.key (see `simclr config`)")
        pairs.append((key, val))
    return pairs


def _configs() -> dict[str, type]:
    """The config class of every command that has one."""
    from simclr.config import COMMAND_CONFIGS

    return COMMAND_CONFIGS


def build_parser() -> argparse.ArgumentParser:
    from simclr.config import key_help

    parser = _Parser(prog="simclr", description="SimCLR: contrastive self-supervised learning of visual representations")
    parser.add_argument("--version", action="version", version=f"simclr {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command, flags in FLAGS.items():
        p = sub.add_parser(command, help=HELP[command],
                           description=f"{HELP[command]}. Any key of `simclr config {command}` can be given as "
                                       "--section.key VALUE; the flags below are short names of keys.")
        p.add_argument("--config", help="YAML file of keys (see configs/ and `simclr config " + command + "`)")
        cls = _configs()[command]
        for flag, dotted in flags.items():
            name = dotted.split(".")[1]
            helptext = f"{key_help(cls, dotted)} ({dotted})"
            if flag in SWITCHES:
                p.add_argument(f"--{flag}", dest=dotted, action="store_const", const="true", default=None, help=helptext)
            else:
                p.add_argument(f"--{flag}", dest=dotted, default=None, metavar=name.upper(), help=helptext)
    d = sub.add_parser("demo", help="pretrain on a synthetic set and compare kNN with a random encoder")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--device", default="auto")
    a = sub.add_parser("ablate", help="run a study of the paper (configs/studies/) and report it beside the paper's figures",
                       description="Train and evaluate every setting of a study as run folders under OUT/runs (resumable: "
                                   "finished runs are kept), then write OUT/results.csv, OUT/report.md and OUT/plot.png. "
                                   "Any pretrain key can follow as --section.key VALUE (it applies to every run).")
    a.add_argument("study", help="a study name (configs/studies/NAME.yaml) or the path of a study YAML")
    a.add_argument("--train-data", required=True, help="labelled training images: pretraining and the probes' training set")
    a.add_argument("--test-data", required=True, help="labelled test images of the probes")
    a.add_argument("--out", required=True, help="study folder")
    a.add_argument("--seeds", type=int, default=1, help="runs per setting, seeds 0..K-1 (default 1)")
    for flag, dotted in (("arch", "model.arch"), ("width", "model.width"), ("epochs", "train.epochs"),
                         ("batch-size", "train.batch_size"), ("max-per-class", "data.max_per_class"), ("device", "train.device")):
        a.add_argument(f"--{flag}", dest=dotted, default=None, metavar=dotted.split(".")[1].upper(), help=f"({dotted})")
    o = sub.add_parser("import-official", help="convert an official google-research/simclr TensorFlow checkpoint into a run folder",
                       description="Convert a checkpoint of google-research/simclr (tf2: a tf.train.Checkpoint folder or "
                                   "PREFIX, or a SavedModel folder; SimCLR v1 and v2, with or without SK) into a run folder "
                                   "that --checkpoint accepts: the ResNet, the projection head and the supervised head. "
                                   "TensorFlow is not needed. See docs/official-checkpoints.md.")
    o.add_argument("ckpt", help="checkpoint folder, PREFIX (PREFIX.index beside it) or SavedModel folder")
    o.add_argument("--out", required=True, help="the run folder to write")
    o.add_argument("--image-size", type=int, default=None, help="training resolution (default 224, or 32 for a CIFAR-stem model)")
    o.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    o.add_argument("--ft-proj-selector", type=int, default=0, metavar="K",
                   help="the supervised head reads the output of the first K projection-head layers (official "
                        "--ft_proj_selector: 0 for pretrained models' linear-eval heads, 1 for SimCLRv2's fine-tuned models)")
    c = sub.add_parser("config", help="list a command's keys with their defaults, or print a recipe resolved on the defaults")
    c.add_argument("for_command", nargs="?", default="pretrain", choices=list(FLAGS), metavar="COMMAND",
                   help="pretrain (default), " + ", ".join(list(FLAGS)[1:]))
    c.add_argument("--config", help="YAML recipe to print on top of the defaults")
    return parser


def _version() -> str:
    from simclr import __version__

    return __version__


def _command_config(command: str, args: argparse.Namespace, rest: list[str]):
    """The command's typed config: defaults <- --config FILE <- short flags <- --section.key VALUE."""
    from simclr.config import apply_overrides, config_from_flat, load_config

    cls = _configs()[command]
    cfg = load_config(args.config, cls=cls) if args.config else cls()
    flat = {dotted: v for dotted in FLAGS[command].values() if (v := getattr(args, dotted, None)) is not None}
    cfg = config_from_flat(flat, cfg)
    return apply_overrides(cfg, _pairs(rest))


def _print_scores(name: str, res: dict, as_json: bool) -> None:
    print(f"{name}: top1 {res['top1']:.4f}  top5 {res['top5']:.4f}")
    if as_json:
        print(json.dumps(res))


def _pretrain(cfg) -> int:
    from simclr.train import pretrain

    run = pretrain(cfg)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(f"done: {run}")
    return 0


def _knn(cfg) -> int:
    from simclr.evaluate.knn import knn_evaluate

    res = knn_evaluate(cfg)
    print(f"kNN (k={cfg.knn.k}, T={cfg.knn.temperature}): top1 {res['top1']:.4f}  top5 {res['top5']:.4f}")
    if cfg.eval.json:
        print(json.dumps(res))
    return 0


def _linear(cfg) -> int:
    from simclr.evaluate.linear import linear_evaluate

    _print_scores("linear", linear_evaluate(cfg), cfg.eval.json)
    return 0


def _finetune(cfg) -> int:
    from simclr.evaluate.finetune import finetune_evaluate

    _print_scores("finetune", finetune_evaluate(cfg), cfg.eval.json)
    return 0


def _distill(cfg) -> int:
    from simclr.evaluate.distill import distill_command

    res = distill_command(cfg)
    _print_scores(f"distill (teacher top1 {res['teacher_top1']:.4f})", res, cfg.eval.json)
    return 0


def _embed(cfg) -> int:
    from simclr.evaluate.export import embed

    embed(cfg)
    return 0


def _export(cfg) -> int:
    from simclr.evaluate.export import export

    export(cfg)
    return 0


def _analyze(cfg) -> int:
    from simclr.evaluate.analyze import analyze_run

    res = analyze_run(cfg)
    if cfg.eval.json:
        print(json.dumps({k: v for k, v in res.items() if k != "std_per_dim_h"}))
    return 0


def _views(cfg) -> int:
    from simclr.views import write_views

    res = write_views(cfg, cfg.views.out, cfg.views.n, rows=cfg.views.rows)
    if cfg.views.json:
        print(json.dumps(res))
    return 0


RUNNERS = {"pretrain": _pretrain, "knn": _knn, "linear": _linear, "finetune": _finetune, "distill": _distill, "embed": _embed,
           "export": _export, "analyze": _analyze, "views": _views}


def _ablate(args, rest: list[str], argv: list[str]) -> int:
    import shlex

    from simclr.config import Config, config_from_flat, validate
    from simclr.study import ablate

    if not 1 <= args.seeds <= 1000:
        raise UsageError(f"--seeds must be between 1 and 1000, got {args.seeds}")
    flags = {d: v for d in ("model.arch", "model.width", "train.epochs", "train.batch_size", "data.max_per_class", "train.device")
             if (v := getattr(args, d, None)) is not None}
    overrides = {**flags, **{k.replace("-", "_"): v for k, v in _pairs(rest)}}
    for k in ("data.path", "train.out", "train.seed", "train.resume"):
        if k in overrides:
            raise UsageError(f"--{k} is set by simclr ablate for each run; use --train-data, --out and --seeds")
    validate(config_from_flat(overrides, Config()))  # a bad key or value: one line before anything runs
    from simclr.train import Interrupted

    command = "simclr " + " ".join(shlex.quote(a) for a in argv)
    try:
        res = ablate(args.study, args.train_data, args.test_data, args.out, args.seeds, overrides, command=command)
    except Interrupted as e:  # the run's own advice (--resume) is not how a study continues
        where = str(e).split("; continue with")[0]
        raise Interrupted(e.signum, f"{where}; run the same command again to continue the study") from None
    print(f"done: {res['report']}")
    return 0


def _import_official(args) -> int:
    from simclr.official import import_official

    if args.image_size is not None and not 8 <= args.image_size <= 4096:
        raise UsageError(f"--image-size must be between 8 and 4096, got {args.image_size}")
    if not 0 <= args.ft_proj_selector <= 16:
        raise UsageError(f"--ft-proj-selector must be between 0 and 16, got {args.ft_proj_selector}")
    import_official(args.ckpt, args.out, image_size=args.image_size, overwrite=args.overwrite,
                    ft_proj_selector=args.ft_proj_selector)
    return 0


def _demo(args) -> int:
    from simclr.demo import run_demo

    print(json.dumps(run_demo(out=args.out, device=args.device, epochs=args.epochs)))
    return 0


def _config(args) -> int:
    import yaml

    from simclr.config import config_to_dict, describe, load_config

    cls = _configs()[args.for_command]
    if args.config:
        print(yaml.safe_dump(config_to_dict(load_config(args.config, cls=cls)), sort_keys=False), end="")
    else:
        print(describe(cls), end="")
    return 0


def _loaded(module: str, name: str) -> tuple[type, ...]:
    """``(module.name,)`` if the module is already imported, else ``()``: an exception class whose module was never
    imported cannot have been raised, and importing one here would load torch into a command that failed on its
    arguments (``simclr --help``, a mistyped key or value answers without it)."""
    cls = getattr(sys.modules.get(module), name, None)  # None too for a module still being imported
    return (cls,) if cls is not None else ()


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's to fix: one line on stderr, status 2."""
    return (UsageError, FloatingPointError, *_loaded("simclr.config", "ConfigError"),
            *_loaded("simclr.data.errors", "DataError"), *_loaded("simclr.checkpoint", "CheckpointError"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command in RUNNERS:
            return RUNNERS[args.command](_command_config(args.command, args, rest))
        if args.command == "ablate":
            return _ablate(args, rest, argv)
        if rest:
            raise UsageError(f"unrecognised arguments: {' '.join(rest)[:200]}")
        if args.command == "import-official":
            return _import_official(args)
        return _demo(args) if args.command == "demo" else _config(args)
    except _user_errors() as e:  # an except clause's tuple is evaluated only when an exception arrives
        print(f"simclr {args.command}: error: {' '.join(str(e).split())[:2000]}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        from simclr.data.batches import is_worker_failure

        if not is_worker_failure(e):
            raise
        # A loader worker died while the main process was busy (PyTorch reports it from a signal handler).
        print(f"simclr {args.command}: error: a data loading worker failed: {' '.join(str(e).split())[:300]}; "
              "the last checkpoint is kept", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder the command could not use
        where = f" {os.fsdecode(e.filename)!r}" if e.filename else ""
        print(f"simclr {args.command}: error: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
        return 2
    except _loaded("simclr.train.trainer", "Interrupted") as e:
        print(f"simclr {args.command}: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
