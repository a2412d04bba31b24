"""Learning-rate schedules not in ``torch.optim.lr_scheduler``."""

import math

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
