"""The study sweeper as Hydra finds it: registered through the ``hydra.plugins`` entry point (pyproject.toml),
which Hydra loads at start-up; the sweeper itself (``sweeper.py``, with Optuna) is imported only when a sweep
starts (``hydra/sweeper: study``)."""

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper


class StudySweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from image_classification.sweeps.sweeper import StudySweeperImpl

        self.sweeper = StudySweeperImpl(**settings)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from image_classification.errors import UserError

        try:
            return self.sweeper.sweep(arguments)
        except UserError as err:  # the sweep's own settings (a trial's error fails only that trial)
            sys.exit(f"Error: {err}")
