"""The checkpoint a run continues from: ``last.ckpt``, at the end of every epoch and every N training steps."""

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from image_classification.errors import UserError


class LastCheckpoint(ModelCheckpoint):
    """One file, ``<dirpath>/<filename>.ckpt``, rewritten at the end of every training epoch (after its
    validation), whatever the metrics did, and, with ``every_n_train_steps``, also every that many optimizer steps
    within an epoch: a run killed mid-epoch then loses at most those steps, and its resumed run (``ckpt_path=last``,
    ``resume=auto``) continues the epoch at the next batch, as the run never stopped would have.

    Lightning's own ``save_last`` is written only where a top-k checkpoint is too, so it goes stale once the
    monitored metric stops improving, and its ``every_n_train_steps`` excludes saving at the epoch's end.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last", every_n_train_steps: int | None = None):
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise UserError(f"last_checkpoint.every_n_train_steps must be a positive number or null, "
                            f"not {every_n_train_steps}")  # fmt: skip
        super().__init__(dirpath=dirpath, filename=filename, monitor=None, save_top_k=1, save_on_train_epoch_end=True,
                         enable_version_counter=False)  # fmt: skip
        self.every_n_steps = every_n_train_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:  # fmt: skip
        step = trainer.global_step
        last_batch = batch_idx + 1 >= trainer.num_training_batches  # its epoch's end saves right after
        if (
            not self.every_n_steps
            or step % self.every_n_steps
            or last_batch
            or self._should_skip_saving_checkpoint(trainer)
        ):
            return
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))
