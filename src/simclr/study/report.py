"""What a study leaves: results.csv (one row per run), report.md (our figures beside the paper's) and a plot."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from simclr.checkpoint import atomic_write
from simclr.study.spec import Study

__all__ = ["plot_study", "summarise", "write_report", "write_results"]

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


def summarise(study: Study, rows: list[dict]) -> list[dict]:
    """Per setting, in the study's order: mean and standard deviation over seeds (in percent) of kNN and
    linear top-1, the number of seeds, and the paper's figure for the study's metric (None when it has none)."""
    out = []
    for s in study.settings:
        mine = [r for r in rows if r["setting"] == s.name]
        if not mine:
            continue
        item = {"setting": s.name, "seeds": len(mine), "paper": s.paper.get(study.metric), **s.columns}
        for m in ("knn_top1", "linear_top1"):
            vals = [100 * float(r[m]) for r in mine if r.get(m) is not None]
            item[m] = statistics.fmean(vals) if vals else math.nan
            item[m + "_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(item)
    return out


def _pm(mean: float, sd: float, seeds: int) -> str:
    return f"{mean:.1f}" if seeds < 2 else f"{mean:.1f} ± {sd:.1f}"


def write_report(study: Study, rows: list[dict], out: str | Path, command: str, machine: str, date: str) -> Path:
    """report.md: the study, how it was run, and per setting our kNN and linear top-1 beside the paper's."""
    out = Path(out)
    summary = summarise(study, rows)
    lines = [f"# {study.title}", "", f"Study `{study.name}` ({study.path.name if study.path else ''}). Command:", "",
             "```", command, "```", "", f"Machine: {machine}. Date: {date}. Runs: {len(rows)}.", ""]
    if study.source:
        lines += [f"Paper figures: {study.source}", ""]
    lines += ["| setting | seeds | kNN top-1 (%) | linear top-1 (%) | paper (%) |", "| --- | --- | --- | --- | --- |"]
    for it in summary:
        paper = "" if it["paper"] is None else f"{it['paper']:.1f}"
        lines.append(f"| {it['setting']} | {it['seeds']} | {_pm(it['knn_top1'], it['knn_top1_sd'], it['seeds'])} | "
                     f"{_pm(it['linear_top1'], it['linear_top1_sd'], it['seeds'])} | {paper} |")
    if summary:
        best = max(summary, key=lambda it: it["linear_top1"])
        lines += ["", f"Best linear top-1 here: {best['setting']} ({best['linear_top1']:.1f}%)."]
    if study.notes:
        lines += ["", study.notes.strip()]
    lines += ["", "Our figures come from a small subset and short runs; the paper's from ImageNet-scale training. "
              "Compare orderings, not values.", "", f"![{study.name}](plot.png)", ""]
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
        x = range(len(names))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 3.5), 3.5))
        ax.bar([i - 0.2 for i in x], [it["linear_top1"] for it in summary], 0.4, yerr=[it["linear_top1_sd"] for it in summary],
               label="linear (ours)")
        ax.bar([i + 0.2 for i in x], [it["knn_top1"] for it in summary], 0.4, yerr=[it["knn_top1_sd"] for it in summary],
               label="kNN (ours)")
        px = [i for i, it in enumerate(summary) if it["paper"] is not None]
        if px:
            ax.plot(px, [summary[i]["paper"] for i in px], "k*", markersize=10, label="paper")
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylabel("top-1 (%)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(study.title, fontsize=10)
    fig.tight_layout()
    path = Path(path)

    def save(tmp):
        fig.savefig(tmp, dpi=120, format="png")

    try:
        atomic_write(path, save)
    finally:
        plt.close(fig)
    return path
