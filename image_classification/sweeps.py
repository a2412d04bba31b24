"""What sweeps need beyond the Optuna sweeper: a storage folder that exists, and a sampler seed that moves on
when a study is continued."""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SQLITE = "sqlite:///"


def _sqlite_path(storage: Any) -> Path | None:
    if isinstance(storage, str) and storage.startswith(SQLITE) and storage != SQLITE + ":memory:":
        return Path(storage[len(SQLITE) :]).expanduser()
    return None


def continued_seed(seed: int, storage: str | None, study_name: str | None) -> int:
    """``seed`` plus the number of trials the study already holds (the ``${continued_seed:...}`` resolver).

    A sampler seeded the same way on every invocation proposes the same first points again, so rerunning a
    sweep to continue its study would repeat its trials; this seed keeps a new study reproducible and gives a
    continued one new points.
    """
    if storage is None or study_name is None:
        return seed
    path = _sqlite_path(storage)
    if path is not None and not path.is_file():
        return seed  # a new study; do not let Optuna create the file here
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no study of that name yet
        return seed
    return seed + len(study.trials)


class CreateStorageFolder(Callback):
    """Creates the folder of an ``sqlite:///path`` sweeper storage before the study opens it (SQLite creates
    the file, not its folder), so a first sweep into a fresh ``logs/`` works."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = _sqlite_path(config.hydra.sweeper.get("storage"))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
