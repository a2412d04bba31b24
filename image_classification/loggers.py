"""Loggers that continue in place: a resumed run's TensorBoard and CSV logs hold each step once."""

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import Logger, TensorBoardLogger


class CSVLogger(LightningCSVLogger):
    """Lightning's CSV logger, except that a run resumed in its own directory keeps the rows it logged before
    the step it resumes from (Lightning's deletes ``metrics.csv`` and starts it again)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.keep_before = 0

    def continue_from(self, step: int) -> None:
        self.keep_before = step

    @property
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / "metrics.csv"
        kept = []
        if self.keep_before > 0 and path.is_file():
            with path.open(newline="") as file:
                kept = [
                    row for row in csv.DictReader(file) if row.get("step") and float(row["step"]) < self.keep_before
                ]
        writer = super().experiment  # removes the old file; the kept rows are written back with the new ones
        writer.metrics = [*kept, *writer.metrics]
        return writer


def continue_logs(loggers: Iterable[Logger], step: int) -> None:
    """Make the loggers of a run that logs from ``step`` on (0: a fresh run) forget what an earlier run in the
    same directory logged from that step on: TensorBoard purges those events (``purge_step``), the CSV logger
    keeps only the rows before it."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger) and logger._experiment is None:
            logger._kwargs.setdefault("purge_step", step)
        elif isinstance(logger, CSVLogger):
            logger.continue_from(step)
