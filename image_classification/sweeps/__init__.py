"""Sweeps: the Optuna study sweeper (parallel trials, pruning, a report at the end), the callback through which a
trial's run reports to its trial, and the study's storage."""

from image_classification.sweeps.pruning import Pruning
from image_classification.sweeps.storage import continued_seed, open_storage, storage_file

__all__ = ["Pruning", "continued_seed", "open_storage", "storage_file"]
