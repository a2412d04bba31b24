"""Learning-rate schedules not in ``torch.optim.lr_scheduler``, and fitting a schedule to the run's length."""

import functools
import math
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Linear warmup, then cosine decay, in scheduler steps (batches or epochs, per ``interval``).

    With ``w = round(warmup_fraction * total_steps)`` and base learning rate ``b`` the rate at step ``t`` is:
    ``b * start_factor`` at ``t = 0``, rising linearly to ``b`` at ``t = w``; then
    ``b * (min_factor + (1 - min_factor) * (1 + cos(pi * (t - w) / (total_steps - w))) / 2)``,
    so ``b * (1 + min_factor) / 2`` half-way through the decay and ``b * min_factor`` at ``t = total_steps``
    (held there if training runs longer). ``total_steps: null`` in a config is filled by the module with the
    run's length.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_fraction: float = 0.0,
        start_factor: float = 0.0,
        min_factor: float = 0.0,
        last_epoch: int = -1,
    ):
        if total_steps is None or total_steps < 1:
            raise ValueError(f"WarmupCosine needs total_steps >= 1, got {total_steps}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.total_steps = total_steps
        self.warmup_steps = round(warmup_fraction * total_steps)
        self.start_factor = start_factor
        self.min_factor = min_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate at ``step``."""
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


def fills_total_steps(factory: Any) -> bool:
    """Whether a partial scheduler leaves ``total_steps`` (``None``) for the module to fill with the run length."""
    keywords = factory.keywords if isinstance(factory, functools.partial) else {}
    return "total_steps" in keywords and keywords["total_steps"] is None


def scheduler_steps(trainer: Any, interval: str, frequency: int) -> int:
    """How many times Lightning will step a scheduler of this ``interval`` and ``frequency`` in the run.

    Lightning steps an ``interval: step`` scheduler after an optimizer step whose batch index (within the
    epoch, from 1) is a multiple of ``frequency``, and an ``interval: epoch`` one after every
    ``frequency``-th epoch.
    """
    if interval == "epoch":
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            raise ValueError("a schedule over epochs with total_steps: null needs trainer.max_epochs")
        return max(1, trainer.max_epochs // frequency)
    optimizer_steps = trainer.estimated_stepping_batches  # also loads the training data: batches are known
    batches, accumulate = trainer.num_training_batches, trainer.accumulate_grad_batches
    if trainer.max_epochs is None or trainer.max_epochs < 0 or math.isinf(batches):
        return max(1, int(optimizer_steps) // frequency)
    per_epoch = sum(
        1 for b in range(1, int(batches) + 1) if (b % accumulate == 0 or b == batches) and b % frequency == 0
    )
    return max(1, min(per_epoch * trainer.max_epochs, int(optimizer_steps) // frequency))


def continue_schedule(factory: Callable, restored: LRScheduler):
    """A scheduler built by ``factory`` (for the new run length) at the step ``restored`` had reached: a
    resumed run that is longer (or shorter) than the one that saved the checkpoint follows the schedule of
    its own length from where it is, instead of the old schedule's end."""
    fresh = factory(restored.optimizer)
    fresh._step_count = restored._step_count
    fresh.last_epoch = restored.last_epoch - 1
    fresh.step()  # the public way to set the optimizer's learning rates for step `last_epoch`
    return fresh
