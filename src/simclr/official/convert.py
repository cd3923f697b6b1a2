"""Convert an official google-research/simclr checkpoint (tf2/model.py's Model: ResNet, projection head,
supervised head) into this package's modules and a run folder.

Variables are matched by the structure the official code gives them (tf2/resnet.py, tf2/model.py), not by
their order in the file: the stem's convolutions and BNs in order; per block the main branch's convolutions,
BNs and selective-kernel units in order and the projection shortcut's convolution and BN; the head's dense
layers and BNs; the supervised head's dense layer. Everything the network needs must be found and every
model variable used, or the conversion stops with one line.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from simclr.official.tf_checkpoint import TFCheckpointError, object_paths, read_tf_checkpoint

__all__ = ["OfficialModel", "import_official", "official_state_dicts"]

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def _natural(key: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _conv(kernel: np.ndarray) -> torch.Tensor:
    """TF conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()


def _bn(out: dict, prefix: str, tf_bn: dict[str, np.ndarray], where: str) -> None:
    for tf_name, ours in _BN.items():
        if tf_name in tf_bn:
            out[f"{prefix}.{ours}"] = torch.from_numpy(np.array(tf_bn[tf_name], dtype=np.float32))
        elif tf_name != "beta":  # the head's last BN has no beta (center=False)
            raise TFCheckpointError(f"{where}: batch norm without {tf_name}")
    out[f"{prefix}.num_batches_tracked"] = torch.tensor(0)


class _Units:
    """The variables under one path, grouped by the layer that owns them: {layer path: {variable: array}}."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.units: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        for name, value in tensors.items():
            layer, _, var = name.rpartition("/")
            self.units[layer][var] = value
        self.used: set[str] = set()

    def ops(self, prefix: str) -> list[tuple[str, str, dict]]:
        """The layers of the list ``prefix/<i>/...`` in index order as (kind, path, variables): kind 'conv'
        (a plain or fixed-padding convolution), 'bn', or 'sk' (a selective-kernel unit, its variables by
        sub-layer)."""
        items: dict[int, dict[str, dict]] = defaultdict(dict)
        for layer, variables in self.units.items():
            if layer.startswith(prefix + "/"):
                idx, _, rest = layer[len(prefix) + 1:].partition("/")
                if idx.isdigit():
                    items[int(idx)][rest] = variables
                    self.used.add(layer)
        out = []
        for i in sorted(items):
            parts, path = items[i], f"{prefix}/{i}"
            if any(k.startswith("conv2d_fixed_padding") for k in parts) and "conv2d_0" in parts:
                out.append(("sk", path, parts))
            elif set(parts) == {"conv2d"} and "kernel" in parts["conv2d"]:
                out.append(("conv", path, parts["conv2d"]))
            elif set(parts) == {"bn"}:
                out.append(("bn", path, parts["bn"]))
            else:
                raise TFCheckpointError(f"unexpected layer {path} ({', '.join(sorted(parts))})")
        return out


def _fill(sd: dict, ops: list, targets: list[str], where: str) -> None:
    """Assign ops (conv/bn/sk in order) to our module names ``targets`` ('conv:NAME', 'bn:NAME', 'sk:NAME')."""
    kinds = [t.split(":")[0] for t in targets]
    if [k for k, _, _ in ops] != kinds:
        raise TFCheckpointError(f"{where}: layers {[k for k, _, _ in ops]} where the official network has {kinds}")
    for (kind, path, v), target in zip(ops, targets):
        name = target.split(":")[1]
        if kind == "conv":
            sd[f"{name}.weight"] = _conv(v["kernel"])
        elif kind == "bn":
            _bn(sd, name, v, path)
        else:  # SK_Conv2D: a 3x3 to 2C (+BN), 1x1 to mid (+BN), 1x1 to 2C
            sd[f"{name}.conv.weight"] = _conv(v["conv2d_fixed_padding/conv2d"]["kernel"])
            _bn(sd, f"{name}.bn", v["batch_norm_relu/bn"], path)
            sd[f"{name}.fc1.weight"] = _conv(v["conv2d_0"]["kernel"])
            _bn(sd, f"{name}.fc_bn", v["batch_norm_relu_1/bn"], path)
            sd[f"{name}.fc2.weight"] = _conv(v["conv2d_1"]["kernel"])


class OfficialModel:
    """The parts of a converted official checkpoint as state_dicts with this package's names.

    ``encoder``: for ``simclr.model.resnet_from_state_dict``; ``head``: for ``ProjectionHead`` (``head_layers``
    layers, empty when the checkpoint has none); ``classifier``: weight (classes, features) and bias of the
    supervised head, or None.
    """

    def __init__(self, encoder: dict, head: dict, head_layers: int, classifier: dict | None):
        self.encoder, self.head, self.head_layers, self.classifier = encoder, head, head_layers, classifier


def _model_variables(path: str | Path) -> dict[str, np.ndarray]:
    """The model's variables by their path in the model (``resnet_model/...``, ``_projection_head/...``,
    ``supervised_head/...``), whatever object the checkpoint was saved from."""
    raw = read_tf_checkpoint(path, keep=lambda k: ".OPTIMIZER_SLOT" not in k and not k.startswith("optimizer/"))
    paths = object_paths(path)  # checkpoint key -> every path of the object graph that reaches it
    out = {}
    for key, value in raw.items():
        if not key.endswith(_SUFFIX) or ".OPTIMIZER_SLOT" in key:
            continue
        for p in paths.get(key, [key[: -len(_SUFFIX)]]):
            m = re.search(r"(?:^|/)((?:resnet_model|_projection_head|supervised_head)/.*)$", p)
            if m and ".OPTIMIZER_SLOT" not in p:
                out[m.group(1)] = value
                break
    if not any(k.startswith("resnet_model/") for k in out):
        if any(k.startswith("base_model/") for k in raw):
            raise TFCheckpointError(f"{path} is a TF1 checkpoint of google-research/simclr (name-based, base_model/...), which "
                                    "this converter does not read; convert the TF2 SavedModel of the same model "
                                    "(gs://simclr-checkpoints-tf2/..., see docs/official-checkpoints.md)")
        raise TFCheckpointError(f"{path}: no official SimCLR ResNet in this checkpoint (no resnet_model/ variables)")
    return out


def official_state_dicts(path: str | Path) -> OfficialModel:
    """Read an official checkpoint (see ``simclr.official.checkpoint_prefix`` for what ``path`` may be) and
    return its encoder, projection head and supervised head with this package's names."""
    try:
        return _state_dicts(path)
    except (KeyError, ValueError, IndexError, TypeError) as e:  # a layer missing a variable, a list with odd names
        if isinstance(e, TFCheckpointError):
            raise
        raise TFCheckpointError(f"{path}: not the official network's layout ({type(e).__name__}: {str(e)[:200]})") from None


def _state_dicts(path: str | Path) -> OfficialModel:
    units = _Units(_model_variables(path))
    enc: dict[str, torch.Tensor] = {}
    stem = units.ops("resnet_model/initial_conv_relu_max_pool")
    if len(stem) == 6:  # the SK networks' three 3x3 convolutions
        _fill(enc, stem, ["conv:conv1.0", "bn:conv1.1", "conv:conv1.3", "bn:conv1.4", "conv:conv1.6", "bn:bn1"], "stem")
    else:
        _fill(enc, stem, ["conv:conv1", "bn:bn1"], "stem")
    groups = sorted({int(k.split("/")[2]) for k in units.units if k.startswith("resnet_model/block_groups/")})
    if groups != [0, 1, 2, 3]:
        raise TFCheckpointError(f"{path}: the ResNet has block groups {groups}, not 0-3")
    for g in groups:
        blocks = sorted({int(k.split("/")[4]) for k in units.units if k.startswith(f"resnet_model/block_groups/{g}/layers/")})
        if blocks != list(range(len(blocks))):
            raise TFCheckpointError(f"{path}: block group {g} has blocks {blocks}")
        for b in blocks:
            base, ours = f"resnet_model/block_groups/{g}/layers/{b}", f"layer{g + 1}.{b}"
            main = units.ops(f"{base}/conv_relu_dropblock_layers")
            if main:  # bottleneck
                sk = any(kind == "sk" for kind, _, _ in main)
                targets = ["conv:conv1", "bn:bn1", *(["sk:conv2"] if sk else ["conv:conv2", "bn:bn2"]), "conv:conv3", "bn:bn3"]
                short = units.ops(f"{base}/projection_layers")
            else:
                main = units.ops(f"{base}/conv2d_bn_layers")
                targets = ["conv:conv1", "bn:bn1", "conv:conv2", "bn:bn2"]
                short = units.ops(f"{base}/shortcut_layers")
            _fill(enc, main, [f"{t.split(':')[0]}:{ours}.{t.split(':')[1]}" for t in targets], base)
            if short:
                # ResNet-D shortcuts have pooling (and padding) layers before their convolution: index > 0
                first = 1 if int(short[0][1].rsplit("/", 1)[1]) > 0 else 0
                _fill(enc, short, [f"conv:{ours}.downsample.{first}", f"bn:{ours}.downsample.{first + 1}"], base)
    head: dict[str, torch.Tensor] = {}
    j = 0
    while f"_projection_head/linear_layers/{j}/dense" in units.units:
        dense = units.units[f"_projection_head/linear_layers/{j}/dense"]
        units.used.add(f"_projection_head/linear_layers/{j}/dense")
        head[f"layers.{j}.0.weight"] = torch.from_numpy(np.ascontiguousarray(dense["kernel"].T)).float()
        if "bias" in dense:
            head[f"layers.{j}.0.bias"] = torch.from_numpy(np.array(dense["bias"], dtype=np.float32))
        bn = f"_projection_head/linear_layers/{j}/bn_relu/bn"
        if bn in units.units:
            units.used.add(bn)
            _bn(head, f"layers.{j}.1", units.units[bn], bn)
            if "beta" not in units.units[bn]:
                head.pop(f"layers.{j}.1.bias", None)
        j += 1
    classifier = None
    sup = units.units.get("supervised_head/linear_layer/dense")
    if sup is not None:
        units.used.add("supervised_head/linear_layer/dense")
        classifier = {"weight": torch.from_numpy(np.ascontiguousarray(sup["kernel"].T)).float(),
                      "bias": torch.from_numpy(np.array(sup.get("bias", np.zeros(sup["kernel"].shape[1])), dtype=np.float32))}
    left = sorted(set(units.units) - units.used)
    if left:
        raise TFCheckpointError(f"{path}: {len(left)} variable group(s) of the checkpoint fit no part of the official "
                                f"network (e.g. {left[0]})")
    return OfficialModel(enc, head, j, classifier)


def import_official(path: str | Path, out: str | Path, image_size: int | None = None, overwrite: bool = False,
                    ft_proj_selector: int = 0, log=print) -> Path:
    """``simclr import-official``: convert an official checkpoint into the run folder ``out`` (checkpoint.pt,
    encoder.safetensors, config.yaml) that every command taking ``--checkpoint RUN`` accepts.

    The encoder keeps the official network exactly (``model.tf_padding``; ResNet-18/34 with the stage-1
    projection; SK when present); the projection head is kept when the checkpoint has one (else
    ``head.num_layers 0``). The supervised head reads the output of the head's first ``ft_proj_selector`` layers,
    as the official ``--ft_proj_selector`` made it (0: h, the linear-eval heads of pretrained models; 1: SimCLRv2's
    fine-tuned models); the whole classifier is saved as finetuned.safetensors (a teacher for ``simclr distill``,
    classes named by their index), and one on h also as the run's linear classifier (``online``).
    ``image_size``: the resolution the model was trained at (default 224, or 32 for a CIFAR-stem model).
    """
    from simclr.evaluate.finetune import FINETUNED, Classifier, save_finetuned
    from simclr import __version__
    from simclr.checkpoint import encoder_metadata
    from simclr.config import Config, config_to_dict, validate
    from simclr.model.head import ProjectionHead
    from simclr.model.resnet import resnet_from_state_dict
    from simclr.train.run_folder import RunFolder

    from simclr.checkpoint import nonfinite_tensors
    from simclr.official.tf_checkpoint import checkpoint_prefix

    if not str(out).strip():
        raise TFCheckpointError("--out is empty; give the folder for the run")
    prefix = checkpoint_prefix(path)
    if Path(out).resolve() in (prefix.parent.resolve(), prefix.parent.parent.resolve(), Path(path).resolve()):
        raise TFCheckpointError(f"--out {out} is the checkpoint's own folder; give the run a folder of its own")
    parts = official_state_dicts(path)
    bad = nonfinite_tensors({**parts.encoder, **parts.head, **(parts.classifier or {})})
    if bad:
        raise TFCheckpointError(f"{path} holds non-finite weights ({bad[0]}); it cannot be converted")
    try:
        encoder = resnet_from_state_dict(parts.encoder, tf_padding=True)
    except (ValueError, RuntimeError, KeyError) as e:
        raise TFCheckpointError(f"{path}: the ResNet's variables do not form an official network: "
                                f"{str(e).splitlines()[0]}") from None
    cfg = Config()
    m = cfg.model
    for k, v in encoder.arch_config().items():  # the network found, with TensorFlow's padding
        setattr(m, k, v)
    head_dims = [parts.head[f"layers.{j}.0.weight"].shape for j in range(parts.head_layers)]
    cfg.head.num_layers = parts.head_layers
    if head_dims:
        cfg.head.out_dim = int(head_dims[-1][0])
        cfg.head.hidden_dim = int(head_dims[0][0]) if len(head_dims) > 1 else None
    head = ProjectionHead.from_config(encoder.num_features, cfg.head)
    try:
        head.load_state_dict(parts.head)
    except RuntimeError as e:
        raise TFCheckpointError(f"{path}: the projection head does not fit: {str(e).splitlines()[0]}") from None
    cfg.data.image_size = int(image_size or (32 if encoder.cifar_stem else 224))
    validate(cfg)
    weights = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
               **{f"head.{k}": v for k, v in head.state_dict().items()}}
    num_classes, classifier = 0, None
    if not 0 <= ft_proj_selector <= parts.head_layers:
        raise TFCheckpointError(f"--ft-proj-selector {ft_proj_selector}: the checkpoint's projection head has "
                                f"{parts.head_layers} layer(s)")
    if parts.classifier is not None:
        num_classes = int(parts.classifier["weight"].shape[0])
        classifier = Classifier(encoder, num_classes, head if ft_proj_selector else None, ft_proj_selector)
        if parts.classifier["weight"].shape[1] != classifier.fc.in_features:
            raise TFCheckpointError(f"{path}: the supervised head takes {parts.classifier['weight'].shape[1]} features, "
                                    f"the output of {ft_proj_selector} head layer(s) has {classifier.fc.in_features}")
        classifier.fc.load_state_dict(parts.classifier)
        if ft_proj_selector:
            num_classes = 0  # the run's own classifier (online) reads h; this one does not
        else:
            weights.update({f"online.{k}": v for k, v in parts.classifier.items()})
    state = {"format": "simclr-checkpoint-v1", "simclr_version": __version__, "config": config_to_dict(cfg), "model": weights,
             "epoch": 0, "step": 0,
             "num_classes": num_classes, "imported": f"google-research/simclr checkpoint {Path(path).resolve()}"}
    folder = RunFolder(out)
    folder.acquire(resume=False, overwrite=overwrite)
    try:
        folder.start(cfg, 0)
        folder.save(state, encoder, encoder_metadata(encoder, cfg.data.image_size, 0, imported="google-research/simclr"))
        if classifier is not None:
            save_finetuned(Path(out) / FINETUNED, classifier.eval(), [str(i) for i in range(classifier.fc.out_features)],
                           cfg.data.image_size, None, {"imported": "google-research/simclr", "ft_proj_selector": ft_proj_selector})
    finally:
        folder.release()
    n = sum(p.numel() for p in encoder.parameters())
    sup = "no supervised head"
    if classifier is not None:
        sup = f"{classifier.fc.out_features}-class supervised head on {'h' if not ft_proj_selector else f'head layer {ft_proj_selector}'}"
    log(f"imported {m.arch} width {m.width:g}{' SK' if m.sk_ratio else ''} ({n / 1e6:.1f}M parameters), "
        f"{cfg.head.num_layers}-layer projection head, {sup} into {out}")
    if classifier is not None and parts.head_layers and not ft_proj_selector:
        log("note: the supervised head was taken to classify h (official --ft_proj_selector=0, the pretrained models' "
            "linear-eval head); SimCLRv2's fine-tuned models classify the first head layer's output: import those with "
            "--ft-proj-selector 1")
    return Path(out)
