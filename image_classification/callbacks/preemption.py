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
    save. A sweep's trial (``trial`` set) leaves the signals to the sweeper, which stops the whole sweep.

    Lightning installs a SIGTERM handler of its own when fitting starts, which ends the run at its next check
    (a ``SystemExit`` with no code: exit 0, nothing saved): this callback's handler replaces it once training
    starts, so a signal at any moment of training (a batch, validation, a checkpoint being written) is acted on
    at the end of the batch in progress, at the end of the epoch when it came during validation, or before
    testing when it came after the last epoch.
    Under DDP all processes decide together, so one signalled process stops them all after the same batch."""

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
        # The process's own handlers, before Lightning puts its own in place (after this hook)
        self.previous = {} if self.in_sweep else {s: signal.getsignal(s) for s in self.signals}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.in_sweep:
            return
        try:
            for signum in self.signals:
                signal.signal(signum, self._receive)
        except ValueError:  # not the main thread: the process's own handlers stay
            self.previous = {}
        if trainer.received_sigterm:  # came while Lightning's handler was in place: acted on after this batch
            self.received = signal.SIGTERM
            connector = getattr(trainer, "_signal_connector", None)
            if connector is not None:  # or Lightning's own check (under DDP, before every batch) ends the run
                connector.received_sigterm = False

    def _stop_now(self, trainer: L.Trainer) -> bool:
        if trainer.world_size > 1:  # any process signalled stops all of them, after the same batch
            return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        return self.received is not None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._stop_now(trainer):
            self._stop(trainer, f"at step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a signal during the epoch's validation: its checkpoints are written by now
        if self._stop_now(trainer):
            self._stop(trainer, f"at the end of epoch {trainer.current_epoch} (step {trainer.global_step})")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_now(trainer):  # after the last epoch's end: the run stops before testing
            self._stop(trainer, f"at the end of training (step {trainer.global_step})")

    def _stop(self, trainer: L.Trainer, when: str) -> None:
        signum = self.received if self.received is not None else signal.SIGTERM  # another process's
        name = signal.Signals(signum).name
        trainer.save_checkpoint(self.path, weights_only=False)  # the whole training state
        message = (
            f"Stopped by {name} {when}: saved {self.path}; the same command with resume=auto "
            "(or ckpt_path=last) continues it"
        )
        self.received = signum
        handler = self.previous.get(self.received)
        if callable(handler):  # e.g. submitit's: it resubmits the job (which resume=auto continues) and exits
            log.warning(message)
            handler(self.received, None)
        raise Preempted(self.received, message)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
