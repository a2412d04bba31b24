"""The one LightningModule: any network, any loss, any optimizer and scheduler, injected."""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

STAGES = ("train", "val", "test")


class ClassificationModule(L.LightningModule):
    """Trains ``network`` to minimise ``loss`` and logs top-1/top-k and per-class accuracy.

    Args:
        optimizer: a partial optimizer; it receives the parameters that require grad, so a frozen
            backbone needs no special path.
        scheduler: Lightning's ``lr_scheduler`` config (``interval``, ``monitor``, ``frequency``) with a
            partial scheduler under ``scheduler``; a ``total_steps=None`` keyword is filled with the run's
            length in scheduler steps. None for a constant learning rate.
        class_names: names for the per-class test accuracies (defaults to the class indices).
    """

    def __init__(
        self,
        network: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        scheduler: Mapping[str, Any] | None = None,
        top_k: int = 5,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.network = network
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_config = dict(scheduler) if scheduler is not None else None
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.top_k = min(top_k, num_classes)
        # micro: the fraction of images classified right (torchmetrics' default is the per-class mean)
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes, average="micro") for _ in STAGES)
        self.val_acc_top_k, self.test_acc_top_k = (
            MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro") for _ in ("val", "test")
        )
        self.test_acc_per_class = MulticlassAccuracy(num_classes, average=None)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume, unlike torchmetrics' default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, targets = batch
        logits = self.network(images)
        loss = self.loss(logits, targets)
        labels = targets.argmax(dim=-1) if targets.ndim > 1 else targets  # soft targets (mixup) score by argmax
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=stage != "test")
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        if stage != "train" and self.top_k > 1:
            top_k = getattr(self, f"{stage}_acc_top_k")
            top_k(logits, labels)
            self.log(f"{stage}/acc_top{self.top_k}", top_k, on_step=False, on_epoch=True)
        if stage == "test":
            self.test_acc_per_class.update(logits, labels)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        per_class = self.test_acc_per_class.compute()
        self.test_acc_per_class.reset()
        self.log_dict({f"test/acc_class/{n}": a for n, a in zip(self.class_names, per_class, strict=True)})

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_config is None:
            return optimizer
        config = dict(self.scheduler_config)
        factory = config.pop("scheduler")
        if isinstance(factory, functools.partial) and factory.keywords.get("total_steps", 0) is None:
            interval = config.get("interval", "epoch")
            steps = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
            factory = functools.partial(factory, total_steps=int(steps))
        return {"optimizer": optimizer, "lr_scheduler": {**config, "scheduler": factory(optimizer)}}
