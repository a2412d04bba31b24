"""What TensorBoard shows beside the scalars: the training inputs, confusion matrices, per-class accuracy, the
most confident mistakes, and the run's speed."""

import logging
import time
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torchvision.transforms import Normalize as NormalizeV1
from torchvision.transforms.v2 import Normalize

from image_classification.callbacks import tensorboard
from image_classification.data.datamodule import transform_tree
from image_classification.evaluation.figures import WRONG, bar_chart_image, confusion_image, image_grid

log = logging.getLogger(__name__)


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning logs scalars at now, so that an image sits at the step of its epoch's metrics."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def normalization(datamodule, transforms: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The mean and std of the first ``Normalize`` among the DataModule's ``transforms`` attributes."""
    for name in transforms:
        for _, transform in transform_tree(name, getattr(datamodule, name, None)):
            if isinstance(transform, Normalize | NormalizeV1):
                return torch.tensor(transform.mean).view(-1, 1, 1), torch.tensor(transform.std).view(-1, 1, 1)
    return None


def displayable(images: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Network inputs as pictures in [0, 1]: normalization undone where the data says how, else as they are
    when they already lie in [0, 1], else each stretched to [0, 1]."""
    images = images.detach().float().cpu()
    if stats is not None and stats[0].shape[0] in (1, images.shape[1]):
        return (images * stats[1] + stats[0]).clamp(0, 1)
    if images.min() >= 0 and images.max() <= 1:
        return images
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-6)


def target_caption(target: torch.Tensor, names: Sequence[str]) -> str:
    """A label's class name; a mixed label (mixup, cutmix) as its two largest parts with their weights."""
    if target.ndim == 0:
        return names[int(target)]
    weights, classes = target.float().topk(min(2, target.numel()))
    if weights[0] > 0.99:
        return names[int(classes[0])]
    return "\n".join(f"{names[int(c)]} {100 * float(w):.0f}%" for w, c in zip(weights, classes, strict=True) if w > 0)


class ReviewImages(L.Callback):
    """TensorBoard images: ``train/inputs``, a grid of the first training batch as the network gets it (after
    augmentation, mixing and the batch transforms), once per run; ``val/confusion_matrix`` and
    ``val/acc_per_class`` after every validation, and ``test/...`` after the test; ``val/mistakes``, the
    validation images the network got wrong with the highest confidence, with their true and predicted class.

    Args:
        inputs: how many training images the grid shows.
        mistakes: how many wrong validation images to show (from the first process's share under DDP).
        max_classes: no confusion matrix or bars beyond this many classes.
        max_bars: beyond this many classes, the bars show the classes with the lowest accuracy.
    """

    def __init__(self, inputs: int, mistakes: int, max_classes: int, max_bars: int):
        self.inputs = inputs
        self.mistakes = mistakes
        self.max_classes = max_classes
        self.max_bars = max_bars
        self.inputs_logged = False
        self.confusion: torch.Tensor | None = None
        self.wrong: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:  # in every checkpoint: a resumed run does not show its inputs again
        return {"inputs_logged": self.inputs_logged}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.inputs_logged = bool(state_dict.get("inputs_logged", False))

    def _classes(self, pl_module: L.LightningModule) -> list[str] | None:
        names = getattr(pl_module, "class_names", None)
        # Jigsaw's classes are permutations, not categories (the module's per_class_metrics says which).
        if not names or not getattr(pl_module, "per_class_metrics", True):
            return None
        return list(names)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        logger = tensorboard(trainer)
        if self.inputs_logged or logger is None or not trainer.is_global_zero:
            return
        self.inputs_logged = True
        images, targets = batch[0][: self.inputs], batch[1][: self.inputs]
        names = getattr(pl_module, "class_names", None)
        if images.ndim != 4 or images.shape[1] not in (1, 3) or not names:  # features, puzzles
            return
        stats = normalization(trainer.datamodule, ("train_batch_transform", "train_transform"))
        grid = image_grid(
            displayable(images, stats),
            [target_caption(t, names) for t in targets.cpu()],
            title=f"the first training batch, {images.shape[2]}x{images.shape[3]}, as the network gets it",
        )
        logger.experiment.add_image("train/inputs", grid, global_step=logging_step(trainer))

    def _start(self, pl_module: L.LightningModule) -> None:
        names = self._classes(pl_module)
        n = len(names) if names else 0
        self.confusion = (
            torch.zeros(n, n, dtype=torch.long, device=pl_module.device) if 0 < n <= self.max_classes else None
        )
        self.wrong = {}

    def _update(self, outputs, batch) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not isinstance(outputs, dict) or "logits" not in outputs:
            return None
        logits, targets = outputs["logits"], batch[1]
        labels = targets.argmax(dim=-1) if targets.ndim > 1 else targets
        if self.confusion is not None:
            n = self.confusion.shape[0]
            predicted = logits.argmax(dim=-1)
            self.confusion += torch.bincount(labels * n + predicted, minlength=n * n).view(n, n)
        return logits, labels

    def _remember_mistakes(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.mistakes <= 0 or images.ndim != 4 or images.shape[1] not in (1, 3):
            return
        confidence, predicted = logits.float().softmax(dim=-1).max(dim=-1)
        wrong = (predicted != labels).nonzero().flatten()
        if wrong.numel() == 0:
            return
        keep = wrong[confidence[wrong].topk(min(self.mistakes, wrong.numel())).indices]
        new = {
            "confidence": confidence[keep].cpu(),
            "images": images[keep].detach().cpu(),
            "labels": labels[keep].cpu(),
            "predicted": predicted[keep].cpu(),
        }
        if self.wrong:
            new = {k: torch.cat([self.wrong[k], v]) for k, v in new.items()}
        order = new["confidence"].topk(min(self.mistakes, len(new["confidence"]))).indices
        self.wrong = {k: v[order] for k, v in new.items()}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if trainer.sanity_checking:
            return
        update = self._update(outputs, batch)
        if update is not None and trainer.is_global_zero and tensorboard(trainer) is not None:
            self._remember_mistakes(batch[0], *update)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        when = f"val, epoch {trainer.current_epoch}" if trainer.state.fn == TrainerFn.FITTING else "val"
        self._log_confusion(trainer, pl_module, "val", when)
        logger = tensorboard(trainer)
        if self.wrong and logger is not None and trainer.is_global_zero:
            names = pl_module.class_names
            stats = normalization(trainer.datamodule, ("eval_batch_transform", "eval_transform"))
            captions = [
                f"true: {names[int(t)]}\npredicted: {names[int(p)]}\n{100 * float(c):.1f}% sure"
                for t, p, c in zip(self.wrong["labels"], self.wrong["predicted"], self.wrong["confidence"], strict=True)
            ]
            grid = image_grid(
                displayable(self.wrong["images"], stats),
                captions,
                colors=[WRONG] * len(captions),
                title=f"{when}: most confident mistakes",
            )
            logger.experiment.add_image("val/mistakes", grid, global_step=logging_step(trainer))
        self.wrong = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._update(outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_confusion(trainer, pl_module, "test", "test")

    def _log_confusion(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, when: str) -> None:
        if self.confusion is None:
            return
        confusion = trainer.strategy.reduce(self.confusion, reduce_op="sum")  # every process's images
        self.confusion = None
        logger = tensorboard(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        names = self._classes(pl_module)
        support = confusion.sum(dim=1)
        total = int(support.sum())
        if total == 0:
            return
        right = confusion.diagonal()
        # short titles: TensorBoard shrinks an image wider than its card
        title = f"{when}: {int(right.sum())}/{total} right ({100 * int(right.sum()) / total:.2f}%)"
        step = logging_step(trainer)
        logger.experiment.add_image(f"{stage}/confusion_matrix", confusion_image(confusion, names, title), step)
        present = [i for i in range(len(names)) if support[i] > 0]
        accuracy = {i: float(right[i] / support[i]) for i in present}
        if len(present) > self.max_bars:
            present = sorted(present, key=lambda i: accuracy[i])[: self.max_bars]
            title = f"{when}: accuracy of the {self.max_bars} hardest of {len(names)} classes"
        else:
            title = f"{when}: accuracy per class"
        bars = bar_chart_image(
            [accuracy[i] for i in present],
            [names[i] for i in present],
            [f"{int(right[i])}/{int(support[i])}" for i in present],
            title=title,
        )
        logger.experiment.add_image(f"{stage}/acc_per_class", bars, step)


class Throughput(L.Callback):
    """Logs, each training epoch, ``train/throughput`` (training images per second, every process's together,
    validation excluded; data loading included) and ``train/epoch_time`` (seconds, its validation included)."""

    def __init__(self):
        self.start = 0.0
        self.validation_start = 0.0
        self.validation_time = 0.0
        self.images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start, self.validation_time, self.images = time.perf_counter(), 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[0])

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validation_time += time.perf_counter() - self.validation_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self.start
        training = max(elapsed - self.validation_time, 1e-9)
        if self.images:
            pl_module.log("train/throughput", self.images * trainer.world_size / training)
        pl_module.log("train/epoch_time", elapsed)
