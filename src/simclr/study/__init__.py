"""Studies of the paper (``simclr ablate``): settings from a YAML file, trained and evaluated as ordinary run
folders, reported beside the paper's figures."""

from simclr.study.report import plot_hardness, plot_study, summarise, write_report, write_results
from simclr.study.runner import run_config, run_study
from simclr.study.spec import Setting, Study, find_study, load_study

__all__ = [
    "Setting",
    "Study",
    "ablate",
    "find_study",
    "load_study",
    "plot_hardness",
    "plot_study",
    "run_config",
    "run_study",
    "summarise",
    "write_report",
    "write_results",
]


def ablate(study_name: str, train_data: str, test_data: str, out: str, seeds: int = 1, overrides: dict | None = None,
           command: str = "", log=print) -> dict:
    """``simclr ablate``: run a study (resumable) and write OUT/results.csv, OUT/report.md and OUT/plot.png."""
    import datetime
    from pathlib import Path

    from simclr.runtime import cpu_model

    study = load_study(study_name)
    rows = run_study(study, train_data, test_data, out, seeds, overrides, log)
    out_p = Path(out)
    write_results(rows, out_p / "results.csv")
    plot_study(study, rows, out_p / "plot.png")
    hardness = plot_hardness(study, rows, out_p / "runs", out_p / "hardness.png") if "hardness" in study.probes else None
    import os

    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    report = write_report(study, rows, out_p, command or f"simclr ablate {study_name}", machine,
                          datetime.date.today().isoformat())
    return {"study": study.name, "runs": len(rows), "results": str(out_p / "results.csv"), "report": str(report),
            "plot": str(out_p / "plot.png"), **({"hardness_plot": str(hardness)} if hardness else {})}
