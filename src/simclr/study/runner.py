"""Running a study: one ordinary run folder per (setting, seed), each evaluated with kNN and the L-BFGS
linear probe on h; everything resumable (finished runs and evaluations are kept and skipped)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simclr.checkpoint import CheckpointError, atomic_write
from simclr.config import Config, ConfigError, LinearConfig, config_from_flat
from simclr.study.spec import PROBES, Setting, Study

__all__ = ["RESULT", "run_config", "run_study"]

RESULT = "study_result.json"  # in each run folder: its row, written when training ends and after each evaluation
MANIFEST = "study.json"  # in the study folder: what the study was started with


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def run_config(study: Study, setting: Setting, seed: int, train_data: str, out: Path, overrides: dict[str, Any]) -> Config:
    """The pretrain config of one run: defaults <- study base <- the setting's keys <- the command line."""
    flat = {**study.base, **setting.keys, **overrides, "data.path": train_data, "train.seed": seed,
            "train.out": str(out), "train.resume": True, "train.progress": False}
    return config_from_flat(flat, Config())


def _manifest(study: Study, train_data: str, test_data: str, seeds: int, overrides: dict[str, Any]) -> dict:
    spec = {"base": study.base, "settings": [[s.name, s.keys] for s in study.settings]}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"study": study.name, "spec_sha256": digest, "train_data": train_data, "test_data": test_data,
            "seeds": seeds, "overrides": {k: overrides[k] for k in sorted(overrides)}}


def _check_manifest(out: Path, want: dict) -> None:
    """A study folder continues only the same study with the same data and keys (more seeds may be added)."""
    path = out / MANIFEST
    if not path.exists():
        _write_json(path, want)
        return
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{path} is unreadable; move the folder away or pick another --out") from None
    for k in ("study", "spec_sha256", "train_data", "test_data", "overrides"):
        if have.get(k) != want[k]:
            what = "the study's settings" if k == "spec_sha256" else k
            raise ConfigError(f"{out} holds a study started with other {what} ({str(have.get(k))[:80]} vs "
                              f"{str(want[k])[:80]}); use the same command, or another --out")
    if want["seeds"] != have.get("seeds"):
        _write_json(path, want)


def _common(run: Path, train_data: str, test_data: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The evaluation keys every probe of a run shares: its encoder, the data, and the study's data and device keys."""
    common = {"encoder.checkpoint": str(run), "data.path": train_data, "data.val_path": test_data}
    for k in ("data.max_per_class", "data.data_dir", "data.num_workers"):
        if k in overrides:
            common[k] = overrides[k]
    if "train.device" in overrides:
        common["eval.device"] = overrides["train.device"]
    return common


class _RunInputs:
    """One run's evaluation inputs, loaded once for all its evaluations: the encoder and the data
    (``simclr.evaluate.inputs.prepare``, results written into the run folder) and the centre-view features of h,
    which the kNN and the linear probe both read."""

    def __init__(self, run: Path, common: dict[str, Any]):
        self.run, self.cfg = run, config_from_flat(common, LinearConfig())
        self._inp, self._h = None, None

    @property
    def inp(self):
        if self._inp is None:
            from simclr.evaluate.inputs import prepare

            self._inp = prepare(self.cfg, labelled=True, with_test=True, out=lambda run: run)
        return self._inp

    def features(self, projection: bool = False) -> tuple:
        """(train, test) features of h, or of z = g(h) with ``projection`` (not kept: one probe reads them)."""
        if not projection and self._h is not None:
            return self._h
        feats = self.inp.features(self.inp.network(projection), self.cfg.eval.batch_size)
        if not projection:
            self._h = feats
        return feats


_QUIET = lambda *_: None  # noqa: E731


def _knn_linear(ev: _RunInputs) -> dict:
    """Weighted kNN and the L-BFGS linear probe on h (every study), as ``simclr knn`` and ``simclr linear --solver
    lbfgs`` compute them (knn.json and linear.json in the run folder), from one extraction."""
    from simclr.evaluate.knn import knn_result
    from simclr.evaluate.linear import lbfgs_on_features, linear_result

    inp, (ftr, fte) = ev.inp, ev.features()
    knn = knn_result(inp, ftr, fte)
    lin = linear_result(inp, lbfgs_on_features(ftr, inp.data, fte, inp.test, inp.device, log=_QUIET))
    return {"knn_top1": knn["top1"], "knn_top5": knn["top5"], "linear_top1": lin["top1"], "linear_top5": lin["top5"]}


def _linear_z(ev: _RunInputs) -> dict:
    """The L-BFGS linear probe on z = g(h) (Figure 8), as ``simclr linear --projection`` (linear_z.json)."""
    from simclr.evaluate.linear import lbfgs_on_features, linear_result

    inp, (ftr, fte) = ev.inp, ev.features(projection=True)
    lin = linear_result(inp, lbfgs_on_features(ftr, inp.data, fte, inp.test, inp.device, log=_QUIET), projection=True)
    return {"linear_z_top1": lin["top1"], "linear_z_top5": lin["top5"]}


def _transforms(ev: _RunInputs) -> dict:
    """Table 3: how well h and z = g(h) predict the transformation applied (simclr.evaluate.transform_probe)."""
    from simclr.config import as_saved, config_from_dict
    from simclr.evaluate.transform_probe import predict_transformations

    inp = ev.inp
    augment = config_from_dict({"augment": as_saved(inp.run.config)["augment"]}).augment
    res = predict_transformations(inp.encoder, inp.run.head.to(inp.device), inp.data, inp.test, inp.image_size, inp.device,
                                  augment)
    _write_json(ev.run / "transforms.json", res)
    return {f"tf_{task}_{rep}": r[rep] for task, r in res.items() for rep in ("h", "z")}


def _hardness(ev: _RunInputs) -> dict:
    """Where NT-Xent's gradient goes among the negatives, and the softmax entropy (simclr.evaluate.hardness);
    the whole curve is kept in the run folder (hardness.json) for the study's plot."""
    from simclr.evaluate.hardness import hardness_of_run

    res = hardness_of_run(ev.run, ev.inp.data, ev.inp.device)
    _write_json(ev.run / "hardness.json", res)
    return {k: v for k, v in res.items() if k != "curve"}


# Each evaluation: the function, and the result columns whose absence means it has not run yet.
EVALUATIONS = {
    "knn_linear": (_knn_linear, ("knn_top1", "linear_top1")),
    "linear_z": (_linear_z, PROBES["linear_z"]),
    "transforms": (_transforms, PROBES["transforms"]),
    "hardness": (_hardness, PROBES["hardness"]),
}


def _last_metrics(run: Path) -> dict:
    try:
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return {}
    return lines[-1] if lines else {}


def run_study(study: Study, train_data: str, test_data: str, out: str | Path, seeds: int = 1,
              overrides: dict[str, Any] | None = None, log: Callable[[str], None] = print,
              pretrain: Callable | None = None) -> list[dict]:
    """Train and evaluate every (setting, seed) of ``study`` under OUT/runs/SETTING-seedK, skipping what is
    done; returns one row per run (the rows of results.csv). Stopping at any point and calling again with
    the same arguments continues: a run resumes from its checkpoint, a finished one is not redone."""
    from simclr.train import pretrain as default_pretrain

    pretrain = pretrain or default_pretrain
    overrides = dict(overrides or {})
    out = Path(out)
    for flag, p in (("--train-data", train_data), ("--test-data", test_data)):  # before hours of training, not after
        builtin = p.split(":")[0] in ("cifar10", "cifar100", "stl10", "synthetic")
        if not builtin and "{" not in p and "::" not in p and not Path(p).exists():
            raise ConfigError(f"{flag} {p[:200]} does not exist")
    for s in study.settings:  # every run's config is checked before the first one starts
        run_config(study, s, 0, train_data, out / "runs" / s.name, overrides)
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, _manifest(study, train_data, test_data, seeds, overrides))
    rows, total, t_study = [], len(study.settings) * seeds, time.perf_counter()
    for i, (setting, seed) in enumerate(((s, k) for s in study.settings for k in range(seeds)), 1):
        run = out / "runs" / f"{setting.name}-seed{seed}"
        done = run / RESULT  # written once training has finished, then after each evaluation
        row = None
        if done.exists():
            try:
                row = json.loads(done.read_text())
            except (OSError, ValueError):
                row = None  # torn or edited: the run is checked again (a finished one is not retrained)
        t0 = time.perf_counter()
        if not isinstance(row, dict) or row.get("setting") != setting.name:
            cfg = run_config(study, setting, seed, train_data, run, overrides)
            if not run.exists():  # a new run (resume only what an interrupted call left)
                cfg.train.resume = False
            pretrain(cfg, log=lambda *_: None)
            last = _last_metrics(run)
            if last.get("epoch", 0) < cfg.train.epochs:
                raise CheckpointError(f"{run} stopped at epoch {last.get('epoch', 0)} of {cfg.train.epochs}; run the same command again")
            row = {"setting": setting.name, "seed": seed, **setting.columns, "contrastive_acc": last.get("contrastive_acc"),
                   "loss": last.get("loss"), "epochs": last.get("epoch"), "minutes": round((time.perf_counter() - t0) / 60, 2)}
            _write_json(done, row)
        todo = [e for e in ("knn_linear", *study.probes) if any(c not in row for c in EVALUATIONS[e][1])]
        if todo:
            ev = _RunInputs(run, _common(run, train_data, test_data, overrides))
            for e in todo:  # each saved as it finishes: an interruption loses at most the one under way
                t1 = time.perf_counter()
                row.update(EVALUATIONS[e][0](ev))
                row["minutes"] = round(row.get("minutes", 0) + (time.perf_counter() - t1) / 60, 2)
                _write_json(done, row)
            log(f"[{i}/{total}] {setting.name} seed {seed}: knn {row['knn_top1']:.4f}  linear {row['linear_top1']:.4f}  "
                f"({row['minutes']:.1f} min)")
        else:
            log(f"[{i}/{total}] {setting.name} seed {seed}: done earlier (knn {row['knn_top1']:.4f}  linear {row['linear_top1']:.4f})")
        rows.append(row)
    log(f"{study.name}: {total} runs, {(time.perf_counter() - t_study) / 60:.1f} min this time")
    return rows
