"""Train, validate and test an image classifier: ``python trainer.py [group=choice ...] [key=value ...]``."""

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from image_classification.checkpoint import RunMetadata, run_metadata
from image_classification.config import (
    RUN_CONFIG_POLICY,
    instantiate,
    instantiate_each,
    print_config_tree,
    user_message,
)
from image_classification.errors import UserError

log = logging.getLogger("trainer")


def build_module(cfg: DictConfig, class_names: list[str] | None = None):
    """The LightningModule with its injected network, loss, optimizer and scheduler."""
    return instantiate(
        cfg.module,
        "module",
        network=instantiate(cfg.network, "network"),
        loss=instantiate(cfg.loss, "loss"),
        optimizer=instantiate(cfg.optimizer, "optimizer"),
        scheduler=instantiate(cfg.scheduler, "scheduler", _convert_="all"),
        class_names=class_names,
    )


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, write ``metrics.json`` to the run directory and return its contents."""
    start = time.perf_counter()
    ckpt_path = cfg.ckpt_path
    if ckpt_path not in (None, "last") and not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path {ckpt_path} does not exist: give a .ckpt file, `last`, or null")
    if cfg.print_config:
        print_config_tree(cfg)
    if cfg.seed is not None:
        L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    datamodule = instantiate(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")  # bad data fails here, before a checkpoint or a log is written
    module = build_module(cfg, datamodule.classes)
    metadata = run_metadata(resolved, datamodule.classes)
    callbacks = instantiate_each(cfg.callbacks, "callback")
    callbacks.append(RunMetadata(metadata))
    loggers = instantiate_each(cfg.logger, "logger")
    trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    checkpointing = trainer.checkpoint_callback
    best = checkpointing.best_model_path if checkpointing is not None else ""
    test_results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    metrics.update(test_results[0])

    report = {
        "metrics": metrics,
        "best_checkpoint": best or None,
        "last_checkpoint": (checkpointing.last_model_path or None) if checkpointing is not None else None,
        "wall_time_s": round(time.perf_counter() - start, 2),
        "run_dir": str(run_dir),
        "git_commit": metadata["git_commit"],
    }
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, run_dir / "metrics.json")

    log.info(f"Run directory:   {run_dir}")
    log.info(f"Best checkpoint: {best or '(none saved)'}")
    log.info(f"Metrics:         {run_dir / 'metrics.json'}")
    log.info(f"TensorBoard:     tensorboard --logdir {run_dir}")
    log.info(f"Test accuracy:   {100 * metrics['test/acc']:.2f}%")
    return report


def objective(report: dict, name: str) -> float:
    """The metric a sweep optimises; a NaN is an error, so the sweeper records a failed trial."""
    metrics = report["metrics"]
    if name not in metrics:
        raise UserError(f"optimized_metric {name!r} was not logged; available: {', '.join(sorted(metrics))}")
    value = float(metrics[name])
    if math.isnan(value):
        raise UserError(f"optimized_metric {name} is NaN: the run diverged")
    return value


@hydra.main(config_path="configs", config_name="train", execution_whitelist=RUN_CONFIG_POLICY)
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: one clear line and exit 1 for a user error, except within a sweep, where the
    error fails only that trial."""
    try:
        report = train(cfg)
        return objective(report, cfg.optimized_metric) if cfg.optimized_metric else None
    except (UserError, OmegaConfBaseException) as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error(f"Error: {user_message(err)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
