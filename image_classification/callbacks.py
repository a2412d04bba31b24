"""Lightning callbacks the configs add."""

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn


class DisableDropout(L.Callback):
    """Sets every dropout rate of the network to zero (``nn.Dropout*`` modules, and the ``drop_prob`` of
    stochastic-depth layers), whatever the network: what ``debug=overfit`` needs to see the loss reach zero."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for module in pl_module.modules():
            if isinstance(module, nn.modules.dropout._DropoutNd):
                module.p = 0.0
            if isinstance(getattr(module, "drop_prob", None), float):
                module.drop_prob = 0.0


class EMA(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights, evaluated everywhere the run evaluates.

    Lightning validates the average and saves it as each checkpoint's ``state_dict`` (the raw weights under
    ``current_model_state``), so the best checkpoint is chosen by the average, ``load_network`` returns it, and
    a resumed run continues both. When a checkpoint is loaded to *test* it, though, Lightning's callback puts
    the raw weights back into the model; this one keeps the average there, so the test scores what was
    validated and what is saved.
    """

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
