"""Mean +- standard deviation of the runs under a folder, e.g. a ``--multirun seed=1,2,3`` sweep:

python -m image_classification.summarize logs/train/multiruns/2026-11-22_20-10-00-000000
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

DEFAULT_METRICS = ("test/acc", "test/acc_top5", "test/nll", "val/acc", "val/nll", "wall_time_s")


def collect(folder: Path) -> list[dict[str, float]]:
    """Each run's metrics (and wall time) from every metrics.json under ``folder``."""
    runs = []
    for path in sorted(folder.rglob("metrics.json")):
        report = json.loads(path.read_text())
        runs.append({**report["metrics"], "wall_time_s": report["wall_time_s"]})
    return runs


def summarize(runs: list[dict[str, float]], metrics=DEFAULT_METRICS) -> dict[str, tuple[float, float, int]]:
    """``metric -> (mean, sample standard deviation, number of runs)`` over the runs that logged it."""
    summary = {}
    for metric in metrics:
        values = [run[metric] for run in runs if metric in run and not math.isnan(run[metric])]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[metric] = (statistics.mean(values), spread, len(values))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    args = parser.parse_args(argv)
    runs = collect(args.folder)
    if not runs:
        sys.exit(f"no metrics.json under {args.folder}: point at a run or multirun directory")
    for metric, (mean, spread, n) in summarize(runs, args.metrics).items():
        if "/acc" in metric:
            print(f"{metric:16s} {100 * mean:8.2f} +- {100 * spread:.2f}%  (n={n})")
        elif metric.endswith("_s"):
            print(f"{metric:16s} {mean:8.2f} +- {spread:.2f} s  (n={n})")
        else:
            print(f"{metric:16s} {mean:8.4f} +- {spread:.4f}  (n={n})")


if __name__ == "__main__":
    main()
