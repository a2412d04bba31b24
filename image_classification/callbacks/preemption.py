"""Stopping for a signal (a cluster pre-empting the job) without losing the epoch in progress."""

import logging
import signal
from pathlib import Path

import lightning as L

log = logging.getLogger(__name__)


class Preempted(Exception):
    """The run stopped for a signal after saving a checkpoint; the same command with ``resume=auto`` (or
    ``ckpt_path=last``) continues it."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class Preemption(L.Callback):
    """On SIGTERM, SIGUSR1 or SIGUSR2 (what SLURM and other schedulers send before they stop or requeue a job;
    submitit asks SLURM for SIGUSR2), finish the batch in progress, save ``path`` (the run's ``last.ckpt``) and
    stop with :class:`Preempted`. The resumed run continues at the next batch of that epoch. Where the process
    had a handler of its own for the signal (submitit's, which requeues the job), that handler runs after the
    save. A sweep's trial (``trial`` set) leaves the signals to the sweeper, which stops the whole sweep."""

    def __init__(self, path: str | Path, trial: object = None,
                 signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2")):  # fmt: skip
        self.path = Path(path)
        self.in_sweep = trial is not None
        self.signals = [getattr(signal, name) for name in signals if hasattr(signal, name)]
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def _receive(self, signum: int, frame: object) -> None:
        self.received = signum  # acted on after the batch in progress, not in the middle of it

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.in_sweep:
            return
        try:
            self.previous = {s: signal.signal(s, self._receive) for s in self.signals}
        except ValueError:  # not the main thread: the process's own handlers stay
            self.previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.received is None:
            return
        name = signal.Signals(self.received).name
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole training state
        message = (
            f"Stopped by {name} at step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx}): "
            f"saved {self.path}; the same command with resume=auto (or ckpt_path=last) continues it"
        )
        handler = self.previous.get(self.received)
        if callable(handler):  # e.g. submitit's: it resubmits the job (which resume=auto continues) and exits
            log.warning(message)
            handler(self.received, None)
        raise Preempted(self.received, message)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
