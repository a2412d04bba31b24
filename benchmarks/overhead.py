"""Framework overhead: ``python trainer.py`` (the default job) against the same job as a plain PyTorch loop,
each in a fresh process, timed from process start to exit (imports, Hydra, training, testing).

    python benchmarks/overhead.py [--repeats 3]

Prints both wall times, both test accuracies and the ratio framework / plain (median over repeats).
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed, result


def framework(workdir: Path) -> tuple[float, float]:
    run_dir = workdir / "run"
    elapsed, _ = timed([sys.executable, str(ROOT / "trainer.py"), f"hydra.run.dir={run_dir}"], workdir)
    return elapsed, json.loads((run_dir / "metrics.json").read_text())["metrics"]["test/acc"]


def plain(workdir: Path) -> tuple[float, float]:
    elapsed, result = timed([sys.executable, str(ROOT / "benchmarks" / "plain_digits.py")], workdir)
    return elapsed, json.loads(result.stdout.strip().splitlines()[-1])["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {"framework": [], "plain": []}
    for i in range(args.repeats):
        for name, job in (("plain", plain), ("framework", framework)):
            with tempfile.TemporaryDirectory() as tmp:
                runs[name].append(job(Path(tmp)))
            seconds, accuracy = runs[name][-1]
            print(f"  repeat {i + 1}: {name:9s} {seconds:6.1f} s  test acc {100 * accuracy:.2f}%", flush=True)
    median = {name: statistics.median(s for s, _ in results) for name, results in runs.items()}
    print(f"\n{'job':12s}{'wall s (median)':>16s}   test accuracy per repeat")
    for name, results in runs.items():
        accuracies = ", ".join(f"{100 * a:.2f}%" for _, a in results)
        print(f"{name:12s}{median[name]:16.1f}   {accuracies}")
    print(f"\nratio framework / plain: {median['framework'] / median['plain']:.2f}")


if __name__ == "__main__":
    main()
