"""simclr ablate: studies as resumable sets of run folders, reported beside the paper's figures."""

import csv
import json

import pytest
from conftest import write_folder

from simclr.config import ConfigError
from simclr.study import load_study, run_study
from simclr.study.spec import STUDY_DIRS

STUDY = """
name: tiny
title: "A tiny study"
source: "made up for the tests"
minutes: 1
base:
  model.arch: resnet18
  model.width: 0.125
  train.epochs: 1
  train.batch_size: 8
  train.device: cpu
  data.image_size: 16
  monitor.knn_every: 0
settings:
  - name: t0.1
    keys: {loss.temperature: 0.1}
    paper: {linear_top1: 60.0}
  - name: t0.5
    keys: {loss.temperature: 0.5}
"""


@pytest.fixture
def study_file(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(STUDY)
    return p


@pytest.fixture
def data(tmp_path):
    return str(write_folder(tmp_path / "data", per_class=10, size=(16, 16)))


def test_the_shipped_studies_load():
    names = sorted(p.stem for d in STUDY_DIRS if d.is_dir() for p in d.glob("*.yaml"))
    assert {"loss", "temperature"} <= set(names)
    for n in names:
        s = load_study(n)
        assert s.settings and s.minutes > 0 and s.title
        assert all(v > 0 for st in s.settings for v in st.paper.values())


@pytest.mark.parametrize("text,match", [
    ("settings: [{name: a, keys: {loss.temprature: 0.1}}]", "unknown config key 'loss.temprature'.*did you mean"),
    ("settings: [{name: a, keys: {loss.temperature: -1}}]", "loss.temperature"),
    ("settings: [{name: a}, {name: a}]", "two settings are named 'a'"),
    ("settings: [{name: 'a/b'}]", "must be letters"),
    ("setings: []", "unknown field 'setings'.*did you mean"),
    ("name: x", "no settings"),
    ("settings: [{name: a, paper: {linear_top1: high}}]", "paper must map"),
])
def test_bad_study_files_are_one_line_errors(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_study(str(p))
    assert "\n" not in str(e.value)


def test_unknown_study_name_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown study 'temprature'.*temperature"):
        load_study("temprature")


def test_pairs_make_every_ordered_pair_and_the_diagonal(tmp_path):
    p = tmp_path / "pairs.yaml"
    p.write_text("pairs: {items: [x, y], keys: {train.out: 'runs/{first}-{second}'}, diagonal: {train.out: 'runs/{first}'},"
                 " paper: {x+y: {linear_top1: 5}}}\nplot: heatmap\n")
    s = load_study(str(p))
    assert [(st.name, st.keys["train.out"]) for st in s.settings] == [
        ("x", "runs/x"), ("x+y", "runs/x-y"), ("y+x", "runs/y-x"), ("y", "runs/y")]
    assert s.settings[1].paper == {"linear_top1": 5.0} and s.settings[1].columns == {"first": "x", "second": "y"}


def test_ablate_runs_reports_and_resumes(tmp_path, study_file, data):
    """End to end through the command line: two settings, results.csv, report.md, plot.png; the same command
    again redoes nothing; a different study in the same folder is refused."""
    from simclr.cli import main

    out = tmp_path / "study"
    args = ["ablate", str(study_file), "--train-data", data, "--test-data", data, "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["setting"], r["seed"]) for r in rows] == [("t0.1", "0"), ("t0.5", "0")]
    assert all(0 <= float(r["knn_top1"]) <= 1 and 0 <= float(r["linear_top1"]) <= 1 for r in rows)
    report = (out / "report.md").read_text()
    assert "| t0.1 | 1 |" in report and "| 60.0 |" in report and "simclr ablate" in report
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = out / "runs" / "t0.1-seed0" / "checkpoint.pt"
    before = ckpt.stat().st_mtime_ns
    assert main(args) == 0
    assert ckpt.stat().st_mtime_ns == before  # finished runs are not redone
    other = tmp_path / "other.yaml"
    other.write_text(STUDY.replace("loss.temperature: 0.5", "loss.temperature: 0.2"))
    assert main(["ablate", str(other), "--train-data", data, "--test-data", data, "--out", str(out)]) == 2


def test_an_interrupted_study_continues_where_it_stopped(tmp_path, study_file, data):
    from simclr.train import pretrain

    calls = []

    def stop_at_second(cfg, log=print):
        calls.append(cfg.train.out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return pretrain(cfg, log=log)

    study = load_study(str(study_file))
    out = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        run_study(study, data, data, out, seeds=1, pretrain=stop_at_second, log=lambda *_: None)
    assert (out / "runs" / "t0.1-seed0" / "study_result.json").exists()
    calls.clear()
    rows = run_study(study, data, data, out, seeds=2, pretrain=lambda cfg, log=print: (calls.append(cfg.train.out), pretrain(cfg, log=log))[1],
                     log=lambda *_: None)
    assert [c.rsplit("/", 1)[1] for c in calls] == ["t0.1-seed1", "t0.5-seed0", "t0.5-seed1"]
    assert [(r["setting"], r["seed"]) for r in rows] == [("t0.1", 0), ("t0.1", 1), ("t0.5", 0), ("t0.5", 1)]
    assert json.loads((out / "study.json").read_text())["seeds"] == 2


def test_keys_the_command_sets_are_refused(tmp_path, study_file, data, capsys):
    from simclr.cli import main

    rc = main(["ablate", str(study_file), "--train-data", data, "--test-data", data, "--out", str(tmp_path / "o"),
               "--train.out", "x"])
    assert rc == 2 and "set by simclr ablate" in capsys.readouterr().err
    rc = main(["ablate", str(study_file), "--train-data", data, "--test-data", data, "--out", str(tmp_path / "o"),
               "--loss.temprature", "1"])
    assert rc == 2 and not (tmp_path / "o").exists()


def test_missing_data_is_refused_before_anything_runs(tmp_path, study_file, data, capsys):
    from simclr.cli import main

    for flags in (["--train-data", data, "--test-data", str(tmp_path / "nope")],
                  ["--train-data", str(tmp_path / "nope"), "--test-data", data]):
        assert main(["ablate", str(study_file), *flags, "--out", str(tmp_path / "o")]) == 2
        assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,match", [
    ("probes: [linear_zz]\nsettings: [{name: a}]", "unknown 'linear_zz'.*did you mean 'linear_z'"),
    ("probes: linear_z\nsettings: [{name: a}]", "probes must be a list"),
    ("show: [linear_z_top1]\nsettings: [{name: a}]", "show: unknown 'linear_z_top1'"),  # needs the linear_z probe
])
def test_bad_probes_and_columns_are_one_line_errors(tmp_path, text, match):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_study(str(p))
    assert "\n" not in str(e.value)


PROBED = STUDY.replace("minutes: 1\n", "minutes: 1\nprobes: [linear_z, hardness]\nshow: [linear_z_top1, contrastive_acc, entropy]\n"
                       ).replace("paper: {linear_top1: 60.0}", "paper: {linear_top1: 60.0, entropy: 4.5}")


def test_probes_add_their_columns_report_and_plot(tmp_path, data):
    from simclr.study import ablate

    p = tmp_path / "probed.yaml"
    p.write_text(PROBED)
    out = tmp_path / "study"
    res = ablate(str(p), data, data, str(out), log=lambda *_: None)
    rows = list(csv.DictReader((out / "results.csv").open()))
    for r in rows:
        assert 0 <= float(r["linear_z_top1"]) <= 1 and 0 < float(r["entropy"]) <= float(r["max_entropy"]) + 1e-9
        assert 0 < float(r["hard_share_1pct"]) <= float(r["hard_share_10pct"]) <= 1
    report = (out / "report.md").read_text()
    assert "linear top-1 on z = g(h) (%)" in report and "paper: entropy (nats)" in report and "| 4.5 |" in report
    assert res["hardness_plot"] == str(out / "hardness.png") and (out / "hardness.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "runs" / "t0.1-seed0" / "hardness.json").read_text())["curve"][-1] == pytest.approx(1.0)
    assert (out / "runs" / "t0.1-seed0" / "linear_z.json").is_file() and (out / "runs" / "t0.1-seed0" / "linear.json").is_file()


def test_an_interrupted_evaluation_redoes_only_what_is_missing(tmp_path, data):
    """A row without a probe's columns (the evaluation was interrupted, or the probe added to the study later)
    gets that probe only: no training, and the other columns are kept as they were."""
    import simclr.study.runner as runner

    p = tmp_path / "probed.yaml"
    p.write_text(PROBED)
    study = load_study(str(p))
    out = tmp_path / "study"
    run_study(study, data, data, out, log=lambda *_: None)
    f = out / "runs" / "t0.5-seed0" / "study_result.json"
    row = json.loads(f.read_text())
    f.write_text(json.dumps({k: v for k, v in row.items() if k != "linear_z_top1"}))
    calls = []
    orig = dict(runner.EVALUATIONS)
    try:
        for name, (fn, cols) in orig.items():
            runner.EVALUATIONS[name] = (lambda ev, fn=fn, name=name: (calls.append((ev.run.name, name)), fn(ev))[1], cols)

        def no_training(cfg, log=print):
            raise AssertionError("a finished run was trained again")

        rows = run_study(study, data, data, out, pretrain=no_training, log=lambda *_: None)
    finally:
        runner.EVALUATIONS.update(orig)
    assert calls == [("t0.5-seed0", "linear_z")]
    again = json.loads(f.read_text())
    assert again["linear_z_top1"] == pytest.approx(row["linear_z_top1"]) and again["knn_top1"] == row["knn_top1"]
    assert rows[1]["linear_z_top1"] == again["linear_z_top1"]


def test_a_run_that_stopped_early_is_not_evaluated(tmp_path, study_file, data):
    from simclr.checkpoint import CheckpointError

    study = load_study(str(study_file))
    with pytest.raises(CheckpointError, match="stopped at epoch 0 of 1; run the same command again") as e:
        run_study(study, data, data, tmp_path / "s", pretrain=lambda cfg, log=print: None, log=lambda *_: None)
    assert "\n" not in str(e.value)  # the command line prints it as its one-line error (exit 2)
    assert not list((tmp_path / "s").glob("runs/*/study_result.json"))


def test_paper_figures_for_unknown_metrics_are_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("settings: [{name: a, paper: {tf_colour_h: 99.3}}]")
    with pytest.raises(ConfigError, match="unknown metric 'tf_colour_h'.*did you mean 'tf_color_h'"):
        load_study(str(p))


def test_a_partly_typed_table3_leaves_the_missing_cells_empty(tmp_path):
    from simclr.study import write_report

    p = tmp_path / "t3.yaml"
    p.write_text("probes: [transforms]\nsettings: [{name: a, paper: {tf_color_h: 99.3}}, {name: b, paper: {tf_color_z: 1}}]")
    study = load_study(str(p))
    rows = [{"setting": n, "seed": 0, "knn_top1": 0.1, "linear_top1": 0.2,
             **{f"tf_{t}_{r}": 0.5 for t in ("color", "rotation", "noise", "sobel") for r in "hz"}} for n in "ab"]
    text = write_report(study, rows, tmp_path, "c", "m", "d").read_text()
    assert "| Colour vs grayscale | 50 | 50.0 | 50.0 | 50.0 | 50.0 | 99.3 |  |" in text
    assert "| Rotation (0/90/180/270) | 25 | 50.0 | 50.0 | 50.0 | 50.0 |  |  |" in text
    assert "typed for b are not shown" in text


def test_the_transforms_probe_runs_inside_a_study(tmp_path, data):
    """The runner's path: the run's saved augmentation, its head, transforms.json and the Table 3 columns."""
    p = tmp_path / "tf.yaml"
    p.write_text(STUDY.replace("minutes: 1\n", "minutes: 1\nprobes: [transforms]\n").split("  - name: t0.5")[0])
    out = tmp_path / "study"
    rows = run_study(load_study(str(p)), data, data, out, log=lambda *_: None)
    saved = json.loads((out / "runs" / "t0.1-seed0" / "transforms.json").read_text())
    assert set(saved) == {"color", "rotation", "noise", "sobel"} and saved["rotation"]["chance"] == 0.25
    for t in saved:
        for r in "hz":
            assert rows[0][f"tf_{t}_{r}"] == saved[t][r] and 0 <= saved[t][r] <= 1


def test_the_head_study_puts_the_papers_table3_beside_ours(tmp_path):
    """report.md in Table 3's layout, from rows made up for the test (no training)."""
    from simclr.study import write_report

    study = load_study("head")
    rows = []
    for i, s in enumerate(study.settings):
        row = {"setting": s.name, "seed": 0, "knn_top1": 0.3, "linear_top1": 0.4 + 0.01 * i, "linear_z_top1": 0.3}
        row.update({f"tf_{t}_{r}": 0.9 if r == "h" else 0.6 for t in ("color", "rotation", "noise", "sobel") for r in "hz"})
        rows.append(row)
    text = write_report(study, rows, tmp_path, "simclr ablate head", "test machine", "2026-12-02").read_text()
    assert "| Rotation (0/90/180/270) | 25 |" in text and "| 67.6 | 25.6 |" in text and "table3: g(h)" in text
    assert "| none | 1 | 30.0 | 40.0 | 30.0 |" in text


def test_a_studys_knn_and_probe_are_the_commands_and_read_the_data_once(tmp_path, study_file, data, monkeypatch):
    """The study evaluates each run as `simclr knn` and `simclr linear --solver lbfgs` do (same numbers, same files),
    loading the data once and extracting h once for both."""
    import simclr.evaluate.features as features
    import simclr.evaluate.inputs as inputs
    from simclr.cli import main

    study = load_study(str(study_file))
    counts = {"prepare": 0, "extract": 0}
    real_prepare, real_extract = inputs.prepare, features.extract_features

    def counting_prepare(*a, **k):
        counts["prepare"] += 1
        return real_prepare(*a, **k)

    def counting_extract(*a, **k):
        counts["extract"] += 1
        return real_extract(*a, **k)

    monkeypatch.setattr(inputs, "prepare", counting_prepare)
    monkeypatch.setattr(features, "extract_features", counting_extract)
    rows = run_study(study, data, data, tmp_path / "s", log=lambda *_: None)
    n = len(rows)
    assert counts == {"prepare": n, "extract": 2 * n}  # train and test features, once per run
    monkeypatch.undo()
    run = tmp_path / "s" / "runs" / f"{rows[0]['setting']}-seed0"
    saved = {f: json.loads((run / f).read_text()) for f in ("knn.json", "linear.json")}
    for f in ("knn.json", "linear.json"):
        (run / f).unlink()
    assert main(["knn", "--checkpoint", str(run), "--train-data", data, "--test-data", data]) == 0
    assert main(["linear", "--checkpoint", str(run), "--train-data", data, "--test-data", data, "--solver", "lbfgs"]) == 0
    for f in ("knn.json", "linear.json"):
        assert json.loads((run / f).read_text()) == saved[f], f
    assert rows[0]["knn_top1"] == saved["knn.json"]["top1"] and rows[0]["linear_top1"] == saved["linear.json"]["top1"]
