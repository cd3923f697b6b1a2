"""A study: a YAML file of settings (pretrain keys) to train and evaluate side by side, with the paper's
numbers for the same cells. ``load_study`` reads and checks one; configs/studies/ holds the paper's."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simclr.config import (
    Config,
    ConfigError,
    _closest,
    config_from_flat,
    load_yaml,
    validate,
)

__all__ = ["PERCENT", "PROBES", "STUDY_DIRS", "Setting", "Study", "find_study", "load_study"]

# Where a study given by name is looked up: the working directory's configs/studies, then the package's own
# (simclr/study/configs: a link to the project's configs/studies, copied into a wheel as package data).
STUDY_DIRS = (Path("configs/studies"), Path(__file__).resolve().parent / "configs")
_TOP = {"name", "title", "source", "minutes", "base", "settings", "pairs", "plot", "metric", "notes", "probes", "show"}
# Evaluations beyond kNN and the L-BFGS probe on h that a study may ask for (``probes``), and the result
# columns each adds (in percent in report.md and plot.png).
PROBES = {
    "linear_z": ("linear_z_top1",),  # the L-BFGS probe on z = g(h) (Figure 8)
    "transforms": tuple(f"tf_{t}_{r}" for t in ("color", "rotation", "noise", "sobel") for r in ("h", "z")),  # Table 3
    "hardness": ("entropy", "hard_share_1pct", "hard_share_10pct"),  # Table 5's entropy, the gradient on hard negatives
}
# Result columns that are fractions (shown in percent); the others (entropy, minutes, ...) are shown as they are.
PERCENT = {"knn_top1", "linear_top1", "linear_z_top1", "contrastive_acc", "hard_share_1pct", "hard_share_10pct",
           *PROBES["transforms"]}


@dataclass
class Setting:
    """One cell of a study: pretrain keys on top of the study's base, the paper's figures for it (metric ->
    value, in percent), and the study's own columns (e.g. the row and column of a heat map)."""

    name: str
    keys: dict[str, Any]
    paper: dict[str, float] = field(default_factory=dict)
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class Study:
    name: str
    title: str
    source: str  # where the paper's figures were typed from (table or figure, and its protocol)
    minutes: float  # wall-clock budget of the defaults on the CIFAR-10 subset on 2 CPU cores
    base: dict[str, Any]
    settings: list[Setting]
    plot: str = "bar"  # bar | heatmap
    metric: str = "linear_top1"  # the column the paper reports, and the plot shows
    notes: str = ""
    path: Path | None = None
    probes: tuple[str, ...] = ()  # extra evaluations of every run (keys of PROBES)
    show: tuple[str, ...] = ()  # extra result columns in report.md's table (and bars in plot.png)


def find_study(name: str) -> Path:
    """A study's YAML: ``name`` as a path, else configs/studies/NAME.yaml (see ``STUDY_DIRS``)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"study file {name} does not exist")
        return p
    known = {}
    for d in STUDY_DIRS:
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            known.setdefault(f.stem, f)
    if name in known:
        return known[name]
    hint = _closest(name, list(known))
    raise ConfigError(f"unknown study '{name[:80]}'{hint}; studies: {', '.join(known) or 'none found'} "
                      "(or give the path of a study YAML)")


def _check_keys(keys: Any, where: str) -> dict[str, Any]:
    if keys is None:
        return {}
    if not isinstance(keys, dict) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{where} must be a mapping of pretrain keys to values")
    validate(config_from_flat(keys, Config()))  # unknown keys and bad values: one line naming the key
    return dict(keys)


# Every result column a study can report, so every metric the paper's figures may be typed for.
COLUMNS = ("knn_top1", "linear_top1", "contrastive_acc", "loss", *(c for cols in PROBES.values() for c in cols))


def _paper(v: Any, where: str) -> dict[str, float]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v.values()):
        raise ConfigError(f"{where}.paper must map a metric to a number")
    unknown = next((k for k in v if k not in COLUMNS), None)
    if unknown is not None:
        raise ConfigError(f"{where}.paper: unknown metric '{str(unknown)[:60]}'{_closest(str(unknown), list(COLUMNS))}; "
                          f"known: {', '.join(COLUMNS)}")
    return {str(k): float(x) for k, x in v.items()}


def _pairs(spec: Any, where: str) -> list[Setting]:
    """Every ordered pair of ``items`` (the diagonal: one item alone), Figure 5's layout: ``keys`` are
    templates in which {first} and {second} are replaced (``diagonal`` for the single ones)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("items"), list) or not spec["items"]:
        raise ConfigError(f"{where}.pairs needs 'items' (a list) and 'keys'")
    items, templ, diag = spec["items"], spec.get("keys") or {}, spec.get("diagonal") or spec.get("keys") or {}
    paper = spec.get("paper") or {}
    out = []
    for a, b in itertools.product(items, items):
        t = diag if a == b else templ
        keys = {k: (v.format(first=a, second=b) if isinstance(v, str) else v) for k, v in t.items()}
        name = a if a == b else f"{a}+{b}"
        out.append(Setting(name, _check_keys(keys, f"{where}.pairs {name}"), _paper(paper.get(name), f"{where}.pairs {name}"),
                           {"first": a, "second": b}))
    return out


def _names(v: Any, where: str, allowed) -> tuple[str, ...]:
    """A list of names from ``allowed`` (None: empty)."""
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where} must be a list of names")
    for x in v:
        if x not in allowed:
            raise ConfigError(f"{where}: unknown '{x[:60]}'{_closest(x, list(allowed))}; known: {', '.join(allowed)}")
    return tuple(dict.fromkeys(v))


def load_study(name_or_path: str) -> Study:
    """Read and check a study: every key is a pretrain key with a valid value, setting names are unique."""
    path = find_study(name_or_path)
    d = load_yaml(path) or {}
    where = path.name
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a study is a mapping (name, title, base, settings, ...)")
    unknown = sorted(set(d) - _TOP)
    if unknown:
        raise ConfigError(f"{where}: unknown field '{unknown[0]}'{_closest(unknown[0], sorted(_TOP))}")
    settings = []
    for i, s in enumerate(d.get("settings") or []):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not s["name"]:
            raise ConfigError(f"{where}: settings[{i}] needs a name")
        settings.append(Setting(s["name"], _check_keys(s.get("keys"), f"{where} {s['name']}"),
                                _paper(s.get("paper"), f"{where} {s['name']}"), dict(s.get("columns") or {})))
    if d.get("pairs") is not None:
        settings += _pairs(d["pairs"], where)
    if not settings:
        raise ConfigError(f"{where}: no settings")
    names = [s.name for s in settings]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"{where}: two settings are named '{dup}'")
    bad = next((n for n in names if not n.replace("+", "").replace("_", "").replace("-", "").replace(".", "").isalnum()), None)
    if bad:
        raise ConfigError(f"{where}: setting name '{bad[:60]}' must be letters, digits, '+', '-', '_' and '.' (it names a folder)")
    try:
        minutes = float(d.get("minutes", 0))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: minutes must be a number") from None
    plot = d.get("plot", "bar")
    if plot not in ("bar", "heatmap"):
        raise ConfigError(f"{where}: plot must be bar or heatmap, got {str(plot)[:40]}")
    probes = _names(d.get("probes"), f"{where}: probes", PROBES)
    known = {"knn_top1", "linear_top1", "contrastive_acc", "loss"} | {c for p in probes for c in PROBES[p]}  # see COLUMNS
    show = _names(d.get("show"), f"{where}: show", sorted(known))
    return Study(name=str(d.get("name") or path.stem), probes=probes, show=show, title=str(d.get("title") or path.stem), source=str(d.get("source", "")),
                 minutes=minutes, base=_check_keys(d.get("base"), f"{where} base"), settings=settings, plot=plot,
                 metric=str(d.get("metric", "linear_top1")), notes=str(d.get("notes", "")), path=path)
