"""The one LightningModule: any network, any loss, any optimizer and scheduler, injected."""

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from image_classification.checkpoint import (
    FROZEN_KEY,
    confine_callback_paths,
    move_frozen_backbone,
    restore_frozen_backbone,
)
from image_classification.errors import Diverged, UserError
from image_classification.networks.linear_probe import Backbone
from image_classification.randomness import RANDOM_STATE_KEY, random_state, set_random_state
from image_classification.schedulers import continue_schedule, fills_total_steps, scheduler_steps

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")


class ClassificationModule(L.LightningModule):
    """Trains ``network`` to minimise ``loss``; logs loss, negative log-likelihood, top-1/top-k accuracy and,
    at test, per-class accuracy.

    Args:
        optimizer: a partial optimizer; it receives the parameters that require grad, so a frozen
            backbone needs no special path.
        scheduler: Lightning's ``lr_scheduler`` config (``interval``, ``monitor``, ``frequency``) with a
            partial scheduler under ``scheduler``; a ``total_steps=None`` keyword is filled with the number
            of times the scheduler will step in the run. None for a constant learning rate.
        top_k: also log top-k accuracy, when k is less than the number of classes.
        class_names: names for the per-class test accuracies (defaults to the class indices).
        per_class_metrics: log each class's test accuracy; off where classes are not categories (the
            permutations of a jigsaw puzzle).
        decay_norm_and_bias: False keeps weight decay off norm layers, biases and what the network's
            ``no_weight_decay()`` names (ViT's position embedding and class token, Swin's position-bias
            tables), as the published ResNet, DeiT and Swin recipes do.
        channels_last: train in the channels-last memory format (faster convolutions on recent GPUs).
        compile: ``torch.compile`` the network for training and evaluation: True, or its keyword arguments.
        nonfinite_loss: what a NaN or infinite training loss does: ``stop`` the run with a message naming the
            step, or ``skip`` the batch (no update; every process skips it together under DDP).
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
        per_class_metrics: bool = True,
        decay_norm_and_bias: bool = True,
        channels_last: bool = False,
        compile: bool | Mapping[str, Any] = False,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
    ):
        super().__init__()
        self.network = network
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_config = dict(scheduler) if scheduler is not None else None
        if scheduler is not None:  # Lightning's lr_scheduler keys, which it checks only once training starts
            interval, frequency = scheduler.get("interval", "epoch"), scheduler.get("frequency", 1)
            if interval not in ("step", "epoch"):
                raise UserError(f"scheduler.interval must be step or epoch, not {interval!r}")
            if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
                raise UserError(f"scheduler.frequency must be a whole number, 1 or more, not {frequency!r}")
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.top_k = top_k if 1 < top_k < num_classes else None
        # micro: the fraction of images classified right (torchmetrics' default is the per-class mean)
        self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(num_classes, average="micro") for _ in STAGES)
        if self.top_k:
            self.val_acc_top_k, self.test_acc_top_k = (
                MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro") for _ in ("val", "test")
            )
        self.per_class_metrics = per_class_metrics
        self.test_confusion = MulticlassConfusionMatrix(num_classes) if per_class_metrics else None
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # survives a resume, unlike torchmetrics' default
        self._schedule: tuple[Callable, int] | None = None
        self.decay_norm_and_bias = decay_norm_and_bias
        self.channels_last = channels_last
        self.compile_options = ({} if compile is True else dict(compile)) if compile else None
        self._compiled = None
        if nonfinite_loss not in ("stop", "skip"):
            raise UserError(f"module.nonfinite_loss must be stop or skip, not {nonfinite_loss!r}")
        self.nonfinite_loss = nonfinite_loss
        self.skipped_batches = 0
        self._random_state: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        features = getattr(self.trainer.datamodule, "features", None)
        backbone = self._frozen_backbone()
        if features is not None and backbone is not None and features.backbone is not backbone:
            # The data holds a frozen backbone's features (linear evaluation on cached features): the probe
            # classifies images with that very backbone, also when it was drawn at random.
            backbone.load_state_dict(features.backbone.state_dict())
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)
        if self.compile_options is not None and self._compiled is None:
            # Kept out of the module's registry, so the state-dict keys stay the network's own.
            object.__setattr__(self, "_compiled", torch.compile(self.network, **self.compile_options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.network if self._compiled is None else self._compiled)(x)

    def _step(self, batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch[0], batch[1]  # an evaluation batch also says which images it holds (batch[2])
        logits = self(images)
        loss = self.loss(logits, targets)
        if stage == "train" and not torch.isfinite(loss.detach()):
            return loss, logits  # neither logged nor counted: training_step stops the run or skips the batch
        labels = targets.argmax(dim=-1) if targets.ndim > 1 else targets  # soft targets (mixup) score by argmax
        accuracy = getattr(self, f"{stage}_acc")
        accuracy(logits, labels)
        # val and test losses averaged over every process: what plateau schedules and checkpoints compare must be
        # the same number on each, or their learning rates and choices drift apart under DDP
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=stage != "test",
            sync_dist=stage != "train",
        )
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        if stage != "train":
            # The plain negative log-likelihood, whatever the training loss: comparable across label
            # smoothing and loss choices, and it still separates models when accuracy saturates.
            nll = F.cross_entropy(logits.float(), labels)
            self.log(f"{stage}/nll", nll, on_step=False, on_epoch=True, sync_dist=True)
            if self.top_k:
                top_k = getattr(self, f"{stage}_acc_top_k")
                top_k(logits, labels)
                self.log(f"{stage}/acc_top{self.top_k}", top_k, on_step=False, on_epoch=True)
        if stage == "test" and self.test_confusion is not None:
            self.test_confusion.update(logits, labels)
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        # A skipped batch must leave no trace: its forward pass also moved the batch-norm statistics.
        buffers = [b.detach().clone() for b in self.network.buffers()] if self.nonfinite_loss == "skip" else []
        loss = self._step(batch, "train")[0]
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:  # one process's NaN stops or skips every process, or DDP would hang
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return loss
        where = f"step {self.trainer.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        if self.nonfinite_loss == "stop":
            raise Diverged(
                f"the training loss is {float(loss)} at {where}: lower optimizer.lr or set trainer.gradient_clip_val "
                "(the checkpoints of the epochs before are kept), or skip such batches with module.nonfinite_loss=skip"
            )
        for buffer, saved in zip(self.network.buffers(), buffers, strict=True):
            buffer.copy_(saved)
        self.skipped_batches += 1
        log.warning(f"Skipped the batch at {where}: its training loss is {float(loss)}")
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=False, on_epoch=True, reduce_fx="max")
        return None  # Lightning makes no backward pass and no optimizer step for this batch

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The logits, for callbacks that look at predictions (``on_validation_batch_end``'s outputs)."""
        return {"logits": self._step(batch, "val")[1].detach()}

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The logits, for callbacks that report per-image predictions (``on_test_batch_end``'s outputs)."""
        return {"logits": self._step(batch, "test")[1].detach()}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def on_test_epoch_end(self) -> None:
        if self.test_confusion is None:
            return
        confusion = self.test_confusion.compute()  # rows: true class, columns: predicted class
        self.test_confusion.reset()
        support = confusion.sum(dim=1)
        missing = [name for name, n in zip(self.class_names, support, strict=True) if n == 0]
        if missing:
            log.warning(
                f"{len(missing)} class(es) have no test images, so no test accuracy: {', '.join(missing[:10])}"
                + (" ..." if len(missing) > 10 else "")
            )
        per_class = confusion.diagonal() / support.clamp_min(1)
        self.log_dict(
            {f"test/acc_class/{n}": a for n, a, s in zip(self.class_names, per_class, support, strict=True) if s > 0}
        )

    def _frozen_backbone(self) -> Backbone | None:
        backbone = getattr(self.network, "backbone", None)
        return backbone if isinstance(backbone, Backbone) else None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RANDOM_STATE_KEY] = random_state()  # what the next batch would draw: a resumed run draws it too
        # A frozen backbone is the same in every checkpoint: written once beside them, not once per epoch.
        directory = getattr(self.trainer.checkpoint_callback, "dirpath", None)
        backbone = self._frozen_backbone()
        if backbone is None or directory is None:
            return
        move_frozen_backbone(checkpoint, backbone.weights_digest(), directory)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before it restores the callbacks' state: the files it names are confined to the
        # checkpoint's folder here, where no setting can leave it out
        path = self.trainer.ckpt_path if self._trainer is not None else None
        if path and "://" not in str(path):
            confine_callback_paths(checkpoint, Path(path).parent)
        self._random_state = checkpoint.get(RANDOM_STATE_KEY)  # put back when training starts
        if FROZEN_KEY in checkpoint:
            restore_frozen_backbone(checkpoint, self._frozen_backbone())

    def parameter_groups(self) -> list:
        """What the optimizer gets: the parameters that require grad (a frozen backbone needs no special path),
        split into a decayed and a not-decayed group unless ``decay_norm_and_bias``."""
        if self.decay_norm_and_bias:
            return [p for p in self.parameters() if p.requires_grad]
        from timm.optim import param_groups_weight_decay  # timm costs its import only where it is used

        keywords = getattr(self.optimizer_factory, "keywords", {})
        exempt = getattr(self.network, "no_weight_decay", set)()
        return param_groups_weight_decay(self.network, keywords.get("weight_decay", 0.0), no_weight_decay_list=exempt)

    def _optimizer(self, params) -> torch.optim.Optimizer:
        try:
            return self.optimizer_factory(params=params)
        except (TypeError, ValueError) as err:
            raise UserError(f"optimizer: {err}") from err

    def _scheduler(self, factory: Callable, optimizer: torch.optim.Optimizer):
        try:
            return factory(optimizer)
        except (TypeError, ValueError) as err:
            raise UserError(f"scheduler: {err}") from err

    def check_input(self, example: torch.Tensor, num_classes: int) -> None:
        """Run the network on one image as the data gives it (eval mode, no gradient): a network that does not
        take the data's images (channels, size), or gives another number of classes, is one line before
        anything is written, not a traceback in the first step."""
        network, training = self.network, self.network.training
        network.eval()
        try:
            with torch.no_grad():
                logits = network(example[None].float())
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            shape = "x".join(map(str, example.shape))
            raise UserError(
                f"the network ({type(network).__name__}) does not take the data's images ({shape}): "
                f"{' '.join(str(err).split())[:300]}; check network.in_chans/in_channels and data.image_size"
            ) from None
        finally:
            network.train(training)
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise UserError(
                f"the network gives {tuple(logits.shape[1:])} outputs per image for the data's {num_classes} "
                f"classes: set network.num_classes={num_classes} (it follows data.num_classes by default)"
            )

    def check_optimization(self, saved_states: Sequence[Any] = ()) -> None:
        """Build the optimizer and scheduler once, so a bad value (``optimizer.lr=-1``) fails before the run
        writes anything, and load into it the optimizer states of the checkpoint the run resumes
        (``saved_states``), which must be this optimizer's; the run builds its own in ``configure_optimizers``."""
        optimizer = self._optimizer(self.parameter_groups())
        for state in saved_states:
            try:
                optimizer.load_state_dict(state)  # fills in the settings newer versions of the optimizer added
                missing = sorted(
                    {key for group in optimizer.param_groups for key in set(optimizer.defaults) - set(group)}
                )
                if missing:  # another optimizer's state loads, without this one's settings
                    raise KeyError(f"it has no {', '.join(missing)}")
            except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as err:
                raise UserError(
                    f"the checkpoint's optimizer state does not fit this run's {type(optimizer).__name__} "
                    f"({err}): resume it with the optimizer and the parameters it was trained with"
                ) from None
        if self.scheduler_config is not None:
            factory = self.scheduler_config["scheduler"]
            self._scheduler(
                functools.partial(factory, total_steps=100) if fills_total_steps(factory) else factory, optimizer
            )

    def optimization(self, trainer: Any) -> dict[str, Any]:
        """The optimizer and Lightning's ``lr_scheduler`` config for a run of ``trainer``'s length (the
        Trainer itself, or what ``plot_lr`` gives in its place: ``max_epochs``, ``num_training_batches``,
        ``accumulate_grad_batches``, ``estimated_stepping_batches``)."""
        optimizer = self._optimizer(self.parameter_groups())
        if self.scheduler_config is None:
            return {"optimizer": optimizer}
        config = dict(self.scheduler_config)
        factory = config.pop("scheduler")
        if fills_total_steps(factory):
            steps = scheduler_steps(trainer, config.get("interval", "epoch"), config.get("frequency", 1))
            factory = functools.partial(factory, total_steps=steps)
            self._schedule = (factory, steps)
        return {"optimizer": optimizer, "lr_scheduler": {**config, "scheduler": self._scheduler(factory, optimizer)}}

    def configure_optimizers(self):
        return self.optimization(self.trainer)

    def on_train_start(self) -> None:
        if self._random_state is not None:  # a resumed run: the generators as they were when the checkpoint was saved
            set_random_state(self._random_state)
            self._random_state = None
        # A resumed run's scheduler state was restored after configure_optimizers, with the length of the
        # run that saved it; rebuild it for this run's length, at the step it had reached.
        if self._schedule is None:
            return
        factory, steps = self._schedule
        config = self.trainer.lr_scheduler_configs[0]
        saved = getattr(config.scheduler, "total_steps", steps)
        if saved != steps:
            config.scheduler = continue_schedule(factory, config.scheduler)
            log.info(
                f"Learning-rate schedule recomputed for this run's {steps} steps (it was {saved}), "
                f"continuing at step {config.scheduler.last_epoch}"
            )
