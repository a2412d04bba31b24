"""Hydra callbacks for sweeps."""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CreateStorageFolder(Callback):
    """Creates the folder of an ``sqlite:///path`` sweeper storage before the study opens it (SQLite creates
    the file, not its folder), so a first sweep into a fresh ``logs/`` works."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        prefix = "sqlite:///"
        if isinstance(storage, str) and storage.startswith(prefix) and storage != prefix + ":memory:":
            Path(storage[len(prefix) :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
