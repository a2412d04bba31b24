"""Train, validate and test an image classifier: ``python trainer.py [group=choice ...] [key=value ...]``."""

import contextlib
import functools
import logging
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from image_classification import runs
from image_classification.callbacks.preemption import Preempted
from image_classification.checkpoint import RunMetadata, read_checkpoint, run_metadata
from image_classification.config import (
    RUN_CONFIG_POLICY,
    build_module,
    check_command_line,
    check_trainer,
    check_types,
    instantiate,
    instantiate_each,
    print_config_tree,
    quiet_library_noise,
    run_config_policy,
    user_message,
)
from image_classification.errors import Diverged, UserError
from image_classification.evaluation import fit_closed_form
from image_classification.loggers import continue_logs

log = logging.getLogger("trainer")
CONFIGS = Path(__file__).resolve().parent / "configs"


@run_config_policy()
def train(cfg: DictConfig, overrides: list[str] | None = None, show_config: bool = False) -> dict:
    """Fit, test the best checkpoint, write ``metrics.json`` to the run directory and return its contents.

    Nothing is written to the run directory until the data, the model, the optimizer and the checkpoint to
    resume from have been checked. ``overrides``: the command line that composed ``cfg``, kept in the
    checkpoints so that resuming recomposes the same config.
    """
    start = time.perf_counter()
    quiet_library_noise()
    check_types(cfg)
    if cfg.seed is not None and not 0 <= cfg.seed < 2**32:  # NumPy's seeds
        raise UserError(f"seed must be a whole number from 0 to {2**32 - 1}, or null, not {cfg.seed}")
    run_dir = Path(cfg.paths.output_dir)
    ckpt_path = runs.resolve_ckpt_path(cfg.ckpt_path, run_dir)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    else:  # unseeded: not the training order of a seeded run before it in this process (a sweep's trials)
        os.environ.pop("PL_GLOBAL_SEED", None)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    datamodule = instantiate(cfg.data, "data")
    datamodule.prepare_data()  # one process at a time, however many there are
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.classes, datamodule)
    if cfg.fit is None:  # a probe fitted in closed form (kNN) gives nothing before its fit
        module.check_input(datamodule.example, datamodule.num_classes)
    checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None  # read once, memory-mapped
    runs.check_resumable(ckpt_path, checkpoint, cfg.trainer.max_epochs)
    runs.check_fits(ckpt_path, checkpoint, module)
    if cfg.fit is None:
        module.check_optimization(checkpoint.get("optimizer_states") or [] if checkpoint else [])
    runs.check_fresh_start(run_dir, ckpt_path)
    check_trainer(cfg.trainer)
    callbacks = instantiate_each(cfg.callbacks, "callback")
    loggers = instantiate_each(cfg.logger, "logger")
    continue_logs(loggers.values(), runs.resumed_step(checkpoint))
    metadata = run_metadata(resolved, datamodule.classes, overrides)
    callback_list = [*callbacks.values(), RunMetadata(metadata)]
    trainer = instantiate(cfg.trainer, "trainer", callbacks=callback_list, logger=list(loggers.values()) or False)
    if cfg.fit is None:
        datamodule.check_training_batches(trainer.world_size, trainer.limit_train_batches)
        for key in ("max_epochs", "max_steps"):
            if cfg.trainer.get(key) == 0:
                raise UserError(f"trainer.{key}=0 trains on no batch: give 1 or more (-1: no limit)")

    if rank_zero_only.rank == 0:  # one process writes the run's records
        if show_config:
            print_config_tree(cfg)
        runs.write_run_records(run_dir, resolved, overrides)
    best, fitted = None, None
    if cfg.fit is not None:  # a probe fitted in closed form on cached features (logistic regression, kNN)
        fit = instantiate(cfg.fit, "fit")
        last, fitted = fit_closed_form(fit, trainer, module, datamodule, run_dir / "checkpoints/last.ckpt")
    else:
        with warnings.catch_warnings():
            if ckpt_path:  # continuing a run in its own directory: of course its checkpoints are there
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                # a checkpoint of another directory: its best-so-far is not this run's, as the run says once
                warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        best, last = runs.checkpoint_paths(callbacks)  # before test restores the callbacks' state from `best`
    tested = best or last
    val_metrics, tested_epoch = runs.checkpoint_val_metrics(tested)
    test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=tested)[0]

    report = {
        "metrics": {**val_metrics, **test_metrics},
        "tested_checkpoint": tested,
        "tested_epoch": tested_epoch,
        "best_checkpoint": best,
        "last_checkpoint": last,
        "fit": fitted,  # what a closed-form fit chose (the L2 strength and its search), else null
        "wall_time_s": round(time.perf_counter() - start, 2),
        "run_dir": str(run_dir),
        "git_commit": metadata["git_commit"],
    }
    if trainer.is_global_zero:
        runs.write_report(run_dir, report)
    log.info(f"Run directory:   {run_dir}")
    log.info(f"Tested:          {tested or 'the final weights (no checkpoint was saved)'}")
    log.info(f"Metrics:         {run_dir / 'metrics.json'}")
    if "tensorboard" in loggers:
        log.info(f"TensorBoard:     tensorboard --logdir {run_dir}")
    log.info(f"Test accuracy:   {100 * test_metrics['test/acc']:.2f}%")
    return report


@contextlib.contextmanager
def sweep_job_alone(hydra_cfg: DictConfig):
    """Within a sweep's job: Lightning starts DDP's other processes by running ``sys.argv`` again with
    ``hydra.run.dir=<hydra.run.dir>``, which would run the whole sweep again in a directory of its own. Here
    they run this job alone (its own overrides), in this job's directory."""
    argv, run_dir, environment = sys.argv, hydra_cfg.run.dir, dict(os.environ)
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = run_dir
        # The next job's processes form a group of their own, on a port of their own (Lightning picks a free
        # one unless MASTER_PORT is set, which it set for this job).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)


def objective(report: dict, name: str) -> float:
    """The metric a sweep optimises; a missing or NaN value is an error, so the sweeper records a failed trial."""
    metrics = report["metrics"]
    if name not in metrics:
        raise UserError(f"optimized_metric {name!r} was not logged; available: {', '.join(sorted(metrics))}")
    value = float(metrics[name])
    if math.isnan(value):
        raise Diverged(f"optimized_metric {name} is NaN: the run diverged")
    return value


def compose_run(config_name: str, overrides: list[str]) -> DictConfig:
    """The config this command composes from ``overrides`` (a resumed run's, or to check a checkpoint's)."""
    try:
        return hydra.compose(config_name, overrides=overrides)
    except HydraException as err:  # a group choice that is not there (any more)
        raise UserError(f"the config does not compose with {' '.join(overrides)}: {err}") from None


@hydra.main(config_path="configs", config_name="train", execution_whitelist=RUN_CONFIG_POLICY)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: one clear line and exit 1 for a user error, except within a sweep, where the
    error fails only that trial. Resuming a checkpoint recomposes the config its run was composed with,
    under the overrides given now."""
    hydra_cfg = HydraConfig.get()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        overrides = list(hydra_cfg.overrides.task)
        if cfg.resume not in (None, "auto"):
            raise UserError(f"resume must be auto or null, not {cfg.resume!r}")
        found = runs.auto_resume(Path(cfg.paths.output_dir)) if cfg.resume and cfg.ckpt_path is None else None
        if found:
            overrides.append(f"ckpt_path={found}")
        compose = functools.partial(compose_run, hydra_cfg.job.config_name)
        resumed = runs.resume_overrides(found or cfg.ckpt_path, Path(cfg.paths.output_dir), overrides, compose)
        if resumed is not None or found:
            overrides = resumed or overrides
            cfg = compose(overrides)
        if sweep:  # a trial's overrides, not the whole tree once per trial
            log.info(f"Trial {hydra_cfg.job.num}: {' '.join(hydra_cfg.overrides.task)}")
        with sweep_job_alone(hydra_cfg) if sweep else contextlib.nullcontext():
            report = train(cfg, overrides, show_config=bool(cfg.print_config) and not sweep)
        return objective(report, cfg.optimized_metric) if cfg.optimized_metric else None
    except Preempted as stop:
        log.warning(str(stop))
        sys.exit(128 + stop.signum)  # what a shell reports for a process the signal ended
    except SIGTERMException:  # Lightning's, outside training (checking, testing): there is nothing to save
        log.warning("Stopped by SIGTERM outside training: the same command with resume=auto continues the run")
        sys.exit(128 + signal.SIGTERM)
    except (UserError, OmegaConfBaseException) as err:
        if sweep or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error(f"Error: {user_message(err)}")
        with contextlib.suppress(Exception):  # nothing is written before the checks: not even Hydra's log file
            runs.remove_failed_attempt(Path(hydra_cfg.runtime.output_dir), Path(cfg.paths.log_dir))
        sys.exit(1)


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:], CONFIGS)
    except UserError as err:
        sys.exit(f"Error: {err}")
    main()
