"""Classes the tests point ``_target_`` at from outside the package, as a user's own module would."""

import json
from pathlib import Path

import lightning as L
from torch import nn


class EpochLog(L.Callback):
    """Appends each epoch that starts training to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "global_step": trainer.global_step}) + "\n")


class TinyMLP(nn.Module):
    """A user's own network."""

    def __init__(self, num_classes: int, in_features: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.net(x)
