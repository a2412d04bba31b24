"""Where a study lives: an Optuna storage URL (``sqlite:///logs/optuna.db``, ``postgresql://...``) or a journal
file on a shared file system (``journal:///shared/study.log``), and a sampler seed that moves on when a study
is continued."""

from pathlib import Path
from typing import Any

SQLITE = "sqlite:///"
# Optuna's journal storage, one append-only file: many machines may share it on NFS, no database server
JOURNAL = "journal:///"


def storage_file(storage: Any) -> Path | None:
    """The file an ``sqlite:///`` or ``journal:///`` storage keeps the study in; None for a server's URL."""
    if not isinstance(storage, str) or storage == SQLITE + ":memory:":
        return None
    for scheme in (SQLITE, JOURNAL):
        if storage.startswith(scheme):
            return Path(storage[len(scheme) :]).expanduser()
    return None


def open_storage(storage: str | None) -> Any:
    """What ``optuna.create_study(storage=...)`` takes for a storage URL (a journal file becomes a
    ``JournalStorage``); None keeps the study in memory."""
    if isinstance(storage, str) and storage.startswith(JOURNAL):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(storage_file(storage))))
    return storage


def continued_seed(seed: int, storage: str | None, study_name: str | None) -> int:
    """``seed`` plus the number of trials the study already holds (the ``${continued_seed:...}`` resolver).

    A sampler seeded the same way on every invocation proposes the same first points again, so rerunning a
    sweep to continue its study would repeat its trials; this seed keeps a new study reproducible and gives a
    continued one new points.
    """
    if storage is None or study_name is None:
        return seed
    path = storage_file(storage)
    if path is not None and not path.is_file():
        return seed  # a new study; do not let Optuna create the file here
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:  # no study of that name yet
        return seed
    return seed + len(study.trials)


def create_study(storage: str | None, study_name: str | None, directions: list[str], sampler: Any = None) -> Any:
    """The study ``study_name`` in ``storage``, created (with the folder an SQLite or journal file needs: SQLite
    creates the file, not its folder) or opened when it exists."""
    import optuna

    path = storage_file(storage)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage),
        sampler=sampler,
        directions=directions,
        load_if_exists=True,
    )
