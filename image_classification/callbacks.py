"""Lightning callbacks the configs add."""

import lightning as L
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
