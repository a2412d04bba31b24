"""Registers image_classification's Optuna study sweeper with Hydra, which finds sweepers in the hydra_plugins
namespace (`hydra/sweeper: study`). The sweeper itself is image_classification.sweeps.sweeper, imported only
when a sweep starts, so that every other Hydra application's start-up does not pay for it."""

from typing import Any

from hydra.plugins.sweeper import Sweeper


class StudySweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from image_classification.sweeps.sweeper import StudySweeper as Implementation

        self.sweeper = Implementation(**settings)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
