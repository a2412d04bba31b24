"""What a finished (or stopped) sweep leaves in its directory: every trial of the study as a table (printed and
``trials.csv``), and the study's plots as images."""

import csv
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)
PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
}


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, duration, each parameter, and the run directory."""
    params = sorted({name for t in study.trials for name in t.params})
    rows = []
    for t in study.trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "duration_s": round(duration, 1) if duration is not None else None,
                **{name: t.params.get(name) for name in params},
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], best: int | None) -> None:
    table = Table(title="Trials", title_justify="left")
    columns = [c for c in rows[0] if c != "run_dir"] if rows else []
    for column in columns:
        table.add_column(column, justify="left" if column == "state" else "right")
    for row in rows:
        table.add_row(*[_cell(row[c]) for c in columns], style="bold green" if row["number"] == best else None)
    needed = sum(max(len(c), 10) + 3 for c in columns) + 4
    console = Console(stderr=True)
    Console(stderr=True, width=max(console.width, needed)).print(table)  # whole, not cut to a terminal's width


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def draw_plots(study: optuna.Study, directory: Path) -> list[Path]:
    """The study's optimization history, parameter importances and parallel coordinates as PNGs; a plot the
    study cannot have yet (importances need two finished trials) is skipped with a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    written = []
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                axes = getattr(plots, function)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(directory / f"{name}.png", dpi=110)
            plt.close(figure)
            written.append(directory / f"{name}.png")
        except Exception as err:  # too few finished trials for this plot, typically
            log.info(f"No {name} plot: {' '.join(str(err).split())[:200]}")
    return written


def write_report(study: optuna.Study, directory: str | Path, plots: bool = True) -> dict[str, Any]:
    """Print the trials, write ``trials.csv`` and (with ``plots``) the plots to ``directory``; returns the best
    trial's number, parameters and value (None when no trial finished)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if completed else None
    with (directory / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        print_table(rows, best.number if best else None)
    plots = draw_plots(study, directory) if completed and plots else []
    states = {s: sum(r["state"] == s for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    log.info(f"Study {study.study_name}: {len(rows)} trials, " + ", ".join(f"{n} {s}" for s, n in states.items() if n))
    if best is not None:
        log.info(f"Best trial {best.number}: value {best.value:.6g}, {best.params}")
    log.info(f"Trials: {directory / 'trials.csv'}" + (f"; plots: {', '.join(p.name for p in plots)}" if plots else ""))
    return {"best_trial": best.number, "best_params": best.params, "best_value": best.value} if best else {}
