"""What a study leaves: results.csv (one row per run), report.md (our figures beside the paper's) and a plot."""

from __future__ import annotations

import csv
import io
import math
import statistics
import textwrap
from pathlib import Path

from simclr.checkpoint import atomic_write
from simclr.study.spec import PERCENT, Study

__all__ = ["plot_hardness", "plot_study", "summarise", "write_report", "write_results"]

_FIRST = ["setting", "seed", "knn_top1", "linear_top1"]


def write_results(rows: list[dict], path: str | Path) -> None:
    """results.csv: setting, seed, knn_top1, linear_top1, then every other column (the study's own ones too)."""
    cols = _FIRST + sorted({k for r in rows for k in r} - set(_FIRST))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    text = buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _metrics(study: Study) -> list[str]:
    """The result columns summarised per setting: kNN and linear top-1, then the study's ``show`` columns, then
    every other column its probes add."""
    from simclr.study.spec import PROBES

    cols = ["knn_top1", "linear_top1", *study.show, *(c for p in study.probes for c in PROBES[p])]
    return list(dict.fromkeys(cols))


def _scale(col: str) -> float:
    return 100.0 if col in PERCENT else 1.0


def summarise(study: Study, rows: list[dict]) -> list[dict]:
    """Per setting, in the study's order: mean and standard deviation over seeds of each result column of
    ``_metrics`` (fractions in percent), the number of seeds, and the paper's figure for the study's metric
    (``paper``; None when it has none) and for every other column (``paper_COLUMN``)."""
    out = []
    for s in study.settings:
        mine = [r for r in rows if r["setting"] == s.name]
        if not mine:
            continue
        item = {"setting": s.name, "seeds": len(mine), "paper": s.paper.get(study.metric), **s.columns}
        for m in _metrics(study):
            vals = [_scale(m) * float(r[m]) for r in mine if r.get(m) is not None]
            item[m] = statistics.fmean(vals) if vals else math.nan
            item[m + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
            item["paper_" + m] = s.paper.get(m)
        out.append(item)
    return out


def _pm(mean: float, sd: float, seeds: int) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.1f}" if seeds < 2 else f"{mean:.1f} ± {sd:.1f}"


_LABELS = {"knn_top1": "kNN top-1 (%)", "linear_top1": "linear top-1 on h (%)", "linear_z_top1": "linear top-1 on z = g(h) (%)",
           "contrastive_acc": "contrastive acc. (%)", "entropy": "entropy (nats)", "hard_share_1pct": "gradient on hardest 1% (%)",
           "hard_share_10pct": "gradient on hardest 10% (%)", "loss": "final loss"}
_TASKS = (("color", "Colour vs grayscale"), ("rotation", "Rotation (0/90/180/270)"), ("noise", "Original vs Gaussian noise"),
          ("sobel", "Original vs Sobel filtered"))


def _main_table(study: Study, summary: list[dict]) -> list[str]:
    cols = list(dict.fromkeys(["knn_top1", "linear_top1", *study.show]))
    head = ["setting", "seeds"]
    for c in cols:
        head.append(_LABELS.get(c, c))
        if c != study.metric and any(it["paper_" + c] is not None for it in summary):
            head.append(f"paper: {_LABELS.get(c, c)}")
    head.append(f"paper: {_LABELS.get(study.metric, study.metric)}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for it in summary:
        cells = [it["setting"], str(it["seeds"])]
        for c in cols:
            cells.append(_pm(it[c], it[c + "_sd"], it["seeds"]))
            if c != study.metric and any(x["paper_" + c] is not None for x in summary):
                cells.append(_paper_cell(it["paper_" + c]))
        cells.append(_paper_cell(it["paper"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _paper_cell(v: float | None) -> str:
    return "" if v is None else f"{v:.1f}"


def _transform_table(summary: list[dict]) -> list[str]:
    """Table 3's layout: per task, the chance level and each setting's h and g(h) accuracies (the paper's where typed)."""
    lines = ["", "Which transformation was applied, predicted from h and from z = g(h) (paper, Table 3; top-1 % of "
             "an L-BFGS linear probe on views of training images, scored on views of test images):", ""]
    head = ["what to predict", "chance (%)"]
    for it in summary:
        head += [f"{it['setting']}: h", f"{it['setting']}: g(h)"]
    typed = [it for it in summary if any(it.get(f"paper_tf_{t}_{r}") is not None for t, _ in _TASKS for r in "hz")]
    if typed:
        head += ["paper: h", "paper: g(h)"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for task, label in _TASKS:
        cells = [label, "25" if task == "rotation" else "50"]
        for it in summary:
            cells += [_pm(it[f"tf_{task}_h"], it[f"tf_{task}_h_sd"], it["seeds"]), _pm(it[f"tf_{task}_z"], it[f"tf_{task}_z_sd"], it["seeds"])]
        if typed:
            cells += [_paper_cell(typed[0]["paper_tf_" + task + "_h"]), _paper_cell(typed[0]["paper_tf_" + task + "_z"])]
        lines.append("| " + " | ".join(cells) + " |")
    if len(typed) > 1:
        lines += ["", f"(The paper's figures typed for {', '.join(it['setting'] for it in typed[1:])} are not shown: "
                      f"one setting's are.)"]
    if typed:
        lines += ["", f"The paper's columns (chance 80 / 25 / 50 / 50 there: its colour task labels pretraining views, 20 % of "
                      f"them grayscale) belong to the setting trained as its Table 3 was: {typed[0]['setting']}."]
    return lines


def write_report(study: Study, rows: list[dict], out: str | Path, command: str, machine: str, date: str) -> Path:
    """report.md: the study, how it was run, and per setting our figures beside the paper's (Table 3's layout too
    when the study predicts transformations)."""
    out = Path(out)
    summary = summarise(study, rows)
    lines = [f"# {study.title}", "", f"Study `{study.name}` ({study.path.name if study.path else ''}). Command:", "",
             "```", command, "```", "", f"Machine: {machine}. Date: {date}. Runs: {len(rows)}.", ""]
    if study.source:
        lines += [f"Paper figures: {study.source}", ""]
    lines += _main_table(study, summary)
    if summary:
        best = max(summary, key=lambda it: it["linear_top1"])
        lines += ["", f"Best linear top-1 here: {best['setting']} ({best['linear_top1']:.1f}%)."]
    if "transforms" in study.probes and summary:
        lines += _transform_table(summary)
    if study.notes:
        lines += ["", study.notes.strip()]
    lines += ["", "Our figures come from a small subset and short runs; the paper's from ImageNet-scale training. "
              "Compare orderings, not values.", "", f"![{study.name}](plot.png)", ""]
    if "hardness" in study.probes:
        lines += ["How NT-Xent's gradient on the negatives is spread, hardest first, for each setting (its own encoder, "
                  "two views of a training batch):", "", "![hardness](hardness.png)", ""]
    text = "\n".join(lines)
    path = out / "report.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def plot_study(study: Study, rows: list[dict], path: str | Path) -> Path:
    """plot.png: a bar chart of linear (and kNN) top-1 per setting with the paper's figures as markers, or
    for a study of pairs a heat map of linear top-1 (rows: first transformation, columns: second)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(study, rows)
    if study.plot == "heatmap":
        firsts = list(dict.fromkeys(it["first"] for it in summary))
        seconds = list(dict.fromkeys(it["second"] for it in summary))
        grid = [[math.nan] * len(seconds) for _ in firsts]
        for it in summary:
            grid[firsts.index(it["first"])][seconds.index(it["second"])] = it["linear_top1"]
        fig, ax = plt.subplots(figsize=(1.1 * len(seconds) + 2, 0.9 * len(firsts) + 1.5))
        im = ax.imshow(grid, cmap="viridis")
        ax.set_xticks(range(len(seconds)), seconds, rotation=45, ha="right")
        ax.set_yticks(range(len(firsts)), firsts)
        ax.set_xlabel("2nd transformation")
        ax.set_ylabel("1st transformation")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, label="linear top-1 (%)")
    else:
        names = [it["setting"] for it in summary]
        # the study's top-1 columns side by side: linear on h, then the others it shows (linear on z), then kNN
        bars = [c for c in ("linear_top1", *study.show, "knn_top1") if c.endswith("_top1")]
        bars = list(dict.fromkeys(bars))
        wd = 0.8 / len(bars)
        fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * len(bars) * len(names) + 3.5), 3.5))
        for j, c in enumerate(bars):
            xs = [i - 0.4 + wd * (j + 0.5) for i in range(len(names))]
            ax.bar(xs, [it[c] for it in summary], wd, yerr=[it[c + "_sd"] for it in summary],
                   label=_LABELS.get(c, c).replace(" (%)", "") + " (ours)")
        px = [i for i, it in enumerate(summary) if it["paper"] is not None]
        if px:
            ax.plot(px, [summary[i]["paper"] for i in px], "k*", markersize=10, label="paper")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("\n".join(textwrap.wrap(study.title, 80)), fontsize=10)  # long titles would be cut at the edges
    fig.tight_layout()
    path = Path(path)

    def save(tmp):
        fig.savefig(tmp, dpi=120, format="png")

    try:
        atomic_write(path, save)
    finally:
        plt.close(fig)
    return path


def plot_hardness(study: Study, rows: list[dict], runs: str | Path, path: str | Path) -> Path | None:
    """hardness.png: for each setting (its first seed), the cumulative share of NT-Xent's gradient on the negatives
    against the fraction of negatives, hardest first (log scale), from each run's hardness.json; the diagonal is
    what equal weights would give. None when no run has the curve."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    for s in study.settings:
        seeds = sorted(r["seed"] for r in rows if r["setting"] == s.name)
        f = Path(runs) / f"{s.name}-seed{seeds[0]}" / "hardness.json" if seeds else None
        try:
            curves.append((s.name, json.loads(f.read_text())["curve"]))
        except (AttributeError, OSError, ValueError, KeyError):
            continue
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, c in curves:
        n = len(c)
        ax.plot([(k + 1) / n for k in range(n)], [100 * v for v in c], label=name)
    n = len(curves[0][1])
    ax.plot([(k + 1) / n for k in range(n)], [100 * (k + 1) / n for k in range(n)], "k:", label="equal weights")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of an anchor's negatives, hardest first")
    ax.set_ylabel("share of the gradient on negatives (%)")
    ax.set_title("NT-Xent's gradient on the hardest negatives", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path
