"""Run a sweep in several worker processes on this machine, all on one study:

    python -m image_classification.sweeps --workers 2 hp_search=digits_optuna [trainer.py overrides]

Each worker is ``python trainer.py --multirun <overrides>`` with its share of ``hydra.sweeper.n_trials``, a
sampler seed of its own, and its share of the CPU cores (``OMP_NUM_THREADS``). The workers ask the one study for
their trials through its storage, so each sees every finished trial, and a worker whose trial ends goes on to
the next at once: nobody waits for the slowest trial of a batch. Ctrl-C or SIGTERM stops every worker (each
marks its running trial FAIL). The study's table and plots are written once all have finished.

On other machines, the same sweep command (``python trainer.py --multirun hp_search=...``, or this one) with the
same storage (a PostgreSQL URL, or ``journal:///<file>`` on a shared file system) adds workers to the study.
"""

import argparse
import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from image_classification.config import CONFIG_DIR, user_message
from image_classification.errors import UserError
from image_classification.sweeps.storage import create_study

TRAINER = CONFIG_DIR.parent / "trainer.py"


def shares(total: int, workers: int) -> list[int]:
    """``total`` trials split as evenly as ``workers`` can share them (the first ones take the remainder)."""
    return [total // workers + (i < total % workers) for i in range(workers)]


def worker_commands(overrides: list[str], workers: int) -> tuple[list[list[str]], dict]:
    """Each worker's command line, and the sweeper settings they share."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    if "study_name" not in sweeper:
        raise UserError("this sweep has no study to share: choose a search with hp_search=<name>")
    settings = {
        "n_trials": sweeper.n_trials,
        "seed": sweeper.sampler.get("seed") or 0,
        "storage": sweeper.storage,
        "study_name": sweeper.study_name,
        "directions": [sweeper.direction] if isinstance(sweeper.direction, str) else list(sweeper.direction),
        "report_dir": Path(cfg.paths.log_dir) / cfg.task_name / "multiruns",
    }
    commands = [
        [
            sys.executable,
            str(TRAINER),
            "--multirun",
            *overrides,
            f"hydra.sweeper.n_trials={n}",
            f"hydra.sweeper.sampler.seed={settings['seed'] + 7919 * i}",
            "hydra.sweeper.plots=false",  # drawn once, when every worker has finished
            "hydra.sweeper.require_completion=false",  # decided once, from all the workers' trials
        ]  # fmt: skip
        for i, n in enumerate(shares(settings["n_trials"], workers))
        if n > 0
    ]
    return commands, settings


def run(workers: int, overrides: list[str]) -> int:
    """Start the workers, wait for them, stop them all on Ctrl-C or SIGTERM; returns the exit code."""
    commands, settings = worker_commands(overrides, workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // len(commands)))}
    print(f"{len(commands)} workers on study {settings['study_name']} ({settings['storage']}), "
          f"{env['OMP_NUM_THREADS']} core(s) each", flush=True)  # fmt: skip
    # the study is created once, here: two workers creating one SQLite file at once collide
    before = len(create_study(settings["storage"], settings["study_name"], settings["directions"]).trials)
    processes = [subprocess.Popen(command, env=env) for command in commands]

    def stop(signum: int, frame: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:  # the workers got Ctrl-C too; let them record their trials
        codes = [process.wait() for process in processes]
    import optuna

    from image_classification.sweeps.report import write_report
    from image_classification.sweeps.storage import open_storage

    study = optuna.load_study(study_name=settings["study_name"], storage=open_storage(settings["storage"]))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    write_report(study, settings["report_dir"] / f"{stamp}_study")
    ran = study.get_trials(deepcopy=False)[before:]
    finished = [t for t in ran if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    if ran and not finished:
        print(f"Error: none of the {len(ran)} trials of the workers completed: their errors are above", flush=True)
        return max(1, *codes, key=abs)
    return max(codes, key=abs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("overrides", nargs="*", help="trainer.py's overrides: hp_search=<name> and any others")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be 1 or more")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args.workers, args.overrides)
    except UserError as err:
        sys.exit(f"Error: {user_message(err)}")


if __name__ == "__main__":
    sys.exit(main())
