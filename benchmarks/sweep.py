"""Sweeps: the overhead of the sweep machinery per trial, and the speed-up of trials run in parallel.

    python benchmarks/sweep.py [--trials 8] [--epochs 20]

1. Overhead: a sweep of tiny trials (hp_search=digits_optuna, one training batch each). The machinery's time
   per trial is the sweep's wall time, from its first trial's start to its last trial's end, minus the time the
   trials' own runs took (their `wall_time_s`), over the number of trials: asking and telling the study, Hydra's
   job set-up, the hand-over of the trial, logging.
2. Parallel: the same sweep of CPU-bound digits trials (`--epochs` each, every trial the same run), each
   command timed whole (imports and worker start-up included): one trial at a time using every core (torch's
   default), one at a time on one core, two at a time with hydra/launcher=joblib (2 jobs, one core each), and
   two worker processes on the study (python -m image_classification.sweeps --workers 2). Prints the wall
   times, trials per minute and the speed-ups of the parallel ones: of the whole command (with the start-up,
   about 6 s of imports, and the final report, which every way pays once) and of the trials alone (the first
   trial's start to the last one's end).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["print_config=false", "logger=none", "callbacks.report=null"]


def run_sweep(
    workdir: Path, name: str, *overrides: str, threads: int | None = None, workers: int = 0
) -> tuple[optuna.Study, float]:
    """The study of a sweep run to its end, and the command's wall time (imports and worker start-up included);
    ``workers``: run it with ``python -m image_classification.sweeps --workers N``."""
    start = [sys.executable, "-m", "image_classification.sweeps", f"--workers={workers}"] if workers else [
        sys.executable, str(ROOT / "trainer.py"), "--multirun"]  # fmt: skip
    command = [*start, "hp_search=digits_optuna", f"hydra.sweeper.study_name={name}", *QUIET, *overrides]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir}/logs/optuna-{name}.db"), wall


def span(study: optuna.Study) -> float:
    """Seconds from the first trial's start to the last trial's end."""
    trials = study.trials
    return (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()


def overhead(workdir: Path, trials: int) -> None:
    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1"]  # fmt: skip
    study, _ = run_sweep(workdir, "overhead", f"hydra.sweeper.n_trials={trials}", *tiny)
    runs = sum(
        json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())["wall_time_s"] for t in study.trials
    )
    total = span(study)
    print(f"overhead: {trials} tiny trials in {total:.1f} s, their runs {runs:.1f} s: "
          f"{(total - runs) / trials:.2f} s of sweep machinery per trial")  # fmt: skip


def parallel(workdir: Path, trials: int, epochs: int) -> None:
    # every trial the same run (the searched values fixed), so that each way runs the same work
    fixed = ["data.batch_size=64", "optimizer.lr=3.0e-3", "optimizer.weight_decay=0.01", "loss.label_smoothing=0.1",
             "network.dropout=0.2"]  # fmt: skip
    common = [f"hydra.sweeper.n_trials={trials}", f"trainer.max_epochs={epochs}", *fixed]
    workers = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]
    sweeps = {
        "one at a time, all cores": run_sweep(workdir, "all", *common),
        "one at a time, one core": run_sweep(workdir, "one", *common, threads=1),
        "joblib, 2 jobs, one core each": run_sweep(workdir, "joblib", *common, *workers, threads=1),
        "2 worker processes": run_sweep(workdir, "two", *common, workers=2),
    }
    walls = {name: wall for name, (_, wall) in sweeps.items()}
    spans = {name: span(study) for name, (study, _) in sweeps.items()}
    for name, wall in walls.items():
        print(f"parallel: {name:30s} {wall:6.1f} s for {trials} trials, {60 * trials / wall:5.1f} trials/min "
              f"(first trial's start to last trial's end: {spans[name]:.1f} s)")  # fmt: skip
    for name in ("joblib, 2 jobs, one core each", "2 worker processes"):
        ratios = [times[baseline] / times[name] for times in (walls, spans)
                  for baseline in ("one at a time, all cores", "one at a time, one core")]  # fmt: skip
        print(f"parallel: {name}: whole command {ratios[0]:.2f}x one at a time with all cores, {ratios[1]:.2f}x "
              f"with one core; trials alone {ratios[2]:.2f}x and {ratios[3]:.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overhead(Path(tmp), args.trials)
        parallel(Path(tmp), args.trials, args.epochs)


if __name__ == "__main__":
    main()
