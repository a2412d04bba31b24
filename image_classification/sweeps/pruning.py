"""How a trial's run reaches its Optuna trial. The Optuna sweeper asks the study for trials and launches each as
a Hydra job; the job never sees the trial object. So the sweeper hands every job its trial's number, study and
storage (``trial={number: 7, study_name: digits, storage: ...}``), and the ``pruning`` callback opens that same
study through the storage and reports to the trial by its number: after every validation it reports the
monitored metric, and stops the run when the study's pruner finds the trial clearly worse than the others at
the same epoch. The sweeper then records the trial as PRUNED."""

import logging
from collections.abc import Mapping
from typing import Any

import lightning as L

from image_classification.errors import UserError
from image_classification.sweeps.storage import open_storage

log = logging.getLogger(__name__)


class Pruning(L.Callback):
    """Reports ``monitor`` to the run's Optuna trial after each validation and raises ``optuna.TrialPruned``
    when the pruner says so; does nothing outside a sweep (``trial`` None) or without a ``pruner``.

    Args:
        trial: ``{number, study_name, storage}`` of the run's trial, set by the sweeper (the ``trial`` key).
        monitor: a metric logged at validation (the sweep's ``optimized_metric``: ``val/nll``).
        pruner: an Optuna pruner config (``_target_: optuna.pruners.MedianPruner``), built when there is a trial;
            null: report only, never prune.
    """

    def __init__(self, trial: Mapping[str, Any] | None, monitor: str | None, pruner: Mapping[str, Any] | None):
        self.trial_info = dict(trial) if trial is not None else None
        self.monitor = monitor
        self.pruner_config = dict(pruner) if pruner is not None else None
        self.trial = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.trial_info is None or self.monitor is None or self.trial is not None:
            return
        import hydra
        import optuna

        pruner = hydra.utils.instantiate(self.pruner_config) if self.pruner_config else optuna.pruners.NopPruner()
        info = self.trial_info
        study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]), pruner=pruner)
        trial = next((t for t in study.get_trials(deepcopy=False) if t.number == info["number"]), None)
        if trial is None:
            raise UserError(f"trial={info}: the study {info['study_name']!r} has no trial {info['number']}")
        self.trial = optuna.trial.Trial(study, trial._trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None or trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise UserError(
                f"callbacks.pruning.monitor={self.monitor} is not logged at validation: prune on a val/ metric"
            )
        import optuna

        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            message = f"Trial {self.trial.number} pruned after epoch {epoch}: {self.monitor}={float(value):.4g}"
            log.info(message)
            raise optuna.TrialPruned(message)
