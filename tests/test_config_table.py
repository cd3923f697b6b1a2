"""Issue 9, check 2: every numeric key of every command, set to NaN, inf, a negative number, zero or a huge number
where its declared range makes that invalid, ends in exit 2 with one line naming the key, before any work."""

import dataclasses
import math
import typing

import pytest

from simclr.cli import main
from simclr.config import _LEGACY_AUTO, COMMAND_CONFIGS

REQUIRED = {
    "pretrain": ["--data", "synthetic", "--out", "OUT"],
    "knn": ["--checkpoint", "CKPT", "--train-data", "synthetic", "--test-data", "synthetic:test", "--out", "OUT"],
    "linear": ["--checkpoint", "CKPT", "--train-data", "synthetic", "--test-data", "synthetic:test", "--out", "OUT"],
    "finetune": ["--checkpoint", "CKPT", "--train-data", "synthetic", "--test-data", "synthetic:test", "--out", "OUT"],
    "distill": ["--teacher", "CKPT", "--data", "synthetic", "--test-data", "synthetic:test", "--out", "OUT"],
    "embed": ["--checkpoint", "CKPT", "--data", "synthetic", "--out", "OUT"],
    "export": ["--checkpoint", "CKPT", "--out", "OUT"],
    "analyze": ["--checkpoint", "CKPT", "--data", "synthetic", "--out", "OUT"],
    "views": ["--data", "synthetic", "--out", "OUT"],
}
PROBES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "-1": -1, "0": 0, "1e300": 1e300}


def _numeric(tp) -> type | None:
    """int or float for a numeric field (possibly optional, or a pair); None otherwise."""
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    if typing.get_origin(tp) is tuple:
        tp = typing.get_args(tp)[0]
    return tp if tp in (int, float) else None


def _invalid(kind: type, value: float, meta: dict) -> bool:
    """Whether the declared range (or type) of a key rules ``value`` out."""
    if not math.isfinite(value):
        return True
    if kind is int and not float(value).is_integer():
        return True
    lo, hi, gt, lt = meta["lo"], meta["hi"], meta["gt"], meta["lt"]
    return ((lo is not None and value < lo) or (gt is not None and value <= gt) or (hi is not None and value > hi)
            or (lt is not None and value >= lt))


def _cases():
    for command, root in COMMAND_CONFIGS.items():
        for sec in dataclasses.fields(root):
            hints = typing.get_type_hints(sec.default_factory)
            for f in dataclasses.fields(sec.default_factory):
                kind = _numeric(hints[f.name])
                if kind is None:
                    continue
                pair = typing.get_origin(hints[f.name]) is tuple
                for text, value in PROBES.items():
                    if _LEGACY_AUTO.get((sec.name, f.name)) == value:
                        continue  # 0 / -1 still mean "auto" for these keys (old recipes)
                    if _invalid(kind, value, dict(f.metadata)):
                        shown = f"[{text}, {text}]" if pair else text
                        yield pytest.param(command, f"{sec.name}.{f.name}", shown, id=f"{command}-{sec.name}.{f.name}={text}")


CASES = list(_cases())


def test_every_numeric_key_is_probed():
    keys = {(c, k) for c, k, _ in (p.values for p in CASES)}
    for command, root in COMMAND_CONFIGS.items():
        for sec in dataclasses.fields(root):
            hints = typing.get_type_hints(sec.default_factory)
            for f in dataclasses.fields(sec.default_factory):
                if _numeric(hints[f.name]):
                    assert (command, f"{sec.name}.{f.name}") in keys
    assert len(CASES) > 300


@pytest.mark.parametrize("command,key,value", CASES)
def test_invalid_value_exits_2_with_one_line_and_no_work(command, key, value, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(out) if a == "OUT" else str(tmp_path / "run") if a == "CKPT" else a for a in REQUIRED[command]]
    assert main([command, *args, f"--{key}", value]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert key in err, err
    assert list(tmp_path.iterdir()) == []  # nothing created: no run folder, no output
