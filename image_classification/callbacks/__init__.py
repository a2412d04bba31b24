"""Lightning callbacks the configs add."""

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.tensorboard.summary import hparams

from image_classification.checkpoint import RunMetadata, save_feature_extractor
from image_classification.data.datamodule import transform_tree
from image_classification.data.jigsaw import Jigsaw, reassemble
from image_classification.evaluation.report import build_report
from image_classification.files import atomic_path
from image_classification.runs import checkpoint_val_metrics, written_by

log = logging.getLogger(__name__)
# HParams' results: the best val/acc, the test accuracy, loss, and negative log-likelihood (the loss without
# label smoothing or focusing: comparable across loss configs).
HP_METRICS = ("hp/val_acc_best", "hp/test_acc", "hp/test_loss", "hp/test_nll")
# The config sections whose values the HParams tab shows: what a sweep searches, and what tells runs apart.
SETTINGS = ("data", "network", "loss", "optimizer", "scheduler", "module", "trainer", "seed", "task_name")


def tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The run's TensorBoard logger, if it has one."""
    return next((x for x in trainer.loggers if isinstance(x, TensorBoardLogger)), None)


def run_metadata_of(trainer: L.Trainer) -> dict | None:
    """What the run's checkpoints carry (its resolved config, overrides, classes), from its RunMetadata."""
    return next((c.metadata for c in trainer.callbacks if isinstance(c, RunMetadata)), None)


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


def tested_checkpoint(trainer: L.Trainer) -> str | None:
    """The checkpoint a run tests: the best one of a monitoring ModelCheckpoint, else the last one written."""
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and written_by(c)]
    monitored = [c for c in callbacks if c.monitor is not None]
    return written_by((monitored or callbacks)[0]) if callbacks else None


class FeatureExtractor(L.Callback):
    """At the end of fitting, writes the trunk of the checkpoint the run tests (``network.<attribute>``) to
    ``path`` as a checkpoint of its own (:func:`save_feature_extractor`): ``load_network(path)`` rebuilds it,
    and ``network.checkpoint=<path>`` starts a backbone of another experiment from it."""

    def __init__(self, path: str | Path, attribute: str = "trunk"):
        self.path = Path(path)
        self.attribute = attribute

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        source = tested_checkpoint(trainer)
        if source is None:
            log.warning(f"No checkpoint was saved, so no feature extractor was written to {self.path}")
            return
        save_feature_extractor(source, self.path, self.attribute)
        log.info(f"Feature extractor: {self.path.absolute()} (the {self.attribute} of {Path(source).name})")


def _displayable(tiles: torch.Tensor) -> torch.Tensor:
    """Tiles (T x C x t x t, normalized each on its own) stretched to [0, 1] each, as 3-channel images."""
    low = tiles.amin(dim=(1, 2, 3), keepdim=True)
    high = tiles.amax(dim=(1, 2, 3), keepdim=True)
    tiles = (tiles - low) / (high - low).clamp_min(1e-6)
    return tiles.expand(-1, 3, -1, -1) if tiles.shape[1] == 1 else tiles[:, :3]


class PuzzleImages(L.Callback):
    """Shows ``count`` validation puzzles in TensorBoard after every validation (``val/puzzles``): per row, the
    tiles as the network is fed them, then put back in the order it predicted, framed green when that is the
    right permutation and red when not."""

    def __init__(self, count: int = 4, gap: int = 2):
        self.count = count
        self.gap = gap

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if batch_idx != 0 or trainer.sanity_checking:
            return
        logger = tensorboard(trainer)
        transforms = transform_tree("eval", getattr(trainer.datamodule, "eval_batch_transform", None))
        permutations = next((t.permutations for _, t in transforms if isinstance(t, Jigsaw)), None)
        if logger is None or permutations is None:
            return
        puzzles, index = batch[0][: self.count], batch[1][: self.count]
        with torch.no_grad():
            predicted = pl_module(puzzles).argmax(dim=-1)
        identity = torch.arange(puzzles.shape[1])
        rows = []
        for tiles, truth, guess in zip(puzzles.float().cpu(), index.cpu(), predicted.cpu(), strict=True):
            tiles = _displayable(tiles)
            fed = reassemble(tiles, identity, self.gap)
            solved = reassemble(tiles, permutations[guess].cpu(), self.gap)
            frame = torch.tensor([0.1, 0.8, 0.1] if guess == truth else [0.9, 0.1, 0.1])[:, None, None]
            framed = frame.expand(3, solved.shape[1] + 2 * self.gap, solved.shape[2] + 2 * self.gap).clone()
            framed[:, self.gap : -self.gap, self.gap : -self.gap] = solved
            fed = nn.functional.pad(fed, [self.gap] * 4, value=1.0)
            rows.append(torch.cat([fed, torch.ones(3, fed.shape[1], 4 * self.gap), framed], dim=2))
        image = torch.cat([nn.functional.pad(r, [0, 0, 0, 2 * self.gap], value=1.0) for r in rows], dim=1)
        logger.experiment.add_image("val/puzzles", image, global_step=trainer.global_step)


class EvaluationReport(L.Callback):
    """Writes the test's report to ``path`` (:func:`~image_classification.evaluation.report.build_report`): the
    top-1 score with a bootstrap 95% interval, the val and test scores, per-class accuracy, each test image's
    prediction, the command, commit, time, host, device and what was evaluated."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.logits: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.ids: list[torch.Tensor] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.logits, self.labels, self.ids = [], [], []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if isinstance(outputs, dict) and "logits" in outputs:
            targets = batch[1]
            self.logits.append(outputs["logits"].float().cpu())
            self.labels.append((targets.argmax(-1) if targets.ndim > 1 else targets).cpu())
            if len(batch) < 3:
                raise RuntimeError("a test batch must say which images it holds, (images, labels, ids)")
            self.ids.append(batch[2].long().cpu())

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logits, labels, positions = gather_predictions(trainer, self.logits, self.labels, self.ids)
        unreadable = gather_unreadable(trainer)
        if not trainer.is_global_zero or not len(labels):
            return
        metadata = run_metadata_of(trainer) or {}
        tested = trainer.ckpt_path
        val_metrics = checkpoint_val_metrics(tested)[0] if tested else {}
        test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        splits = {
            split: {k.split("/", 1)[1]: v for k, v in metrics.items() if "/acc_class/" not in k}
            for split, metrics in (("val", val_metrics), ("test", test_metrics))
        }
        datamodule = trainer.datamodule
        ids = datamodule.example_ids("test") if hasattr(datamodule, "example_ids") else list(range(len(labels)))
        report = build_report(
            logits=logits,
            labels=labels,
            class_names=pl_module.class_names,
            example_ids=[ids[i] for i in positions],  # a limited test ran its first batches
            config=metadata.get("config", {}),
            network=pl_module.network,
            split_metrics=splits,
            metadata=metadata,
            tested_checkpoint=tested,
            unreadable=unreadable,
        )
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(report, indent=1))
        score = report["score"]
        low, high = score["ci95"]
        log.info(
            f"Report:          {self.path} (top-1 {100 * score['top1']:.2f}%, 95% CI {100 * low:.2f}-{100 * high:.2f})"
        )


def gather_predictions(
    trainer: L.Trainer, logits: list[torch.Tensor], labels: list[torch.Tensor], ids: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``(logits, labels, positions)`` of the whole test on the first process, in test-set order: each image's
    position in the test set (its id, which its batch carried: an image that could not be read left no gap to
    shift the others into) with its logits and label. Under DDP every process's share is gathered; the other
    processes get nothing."""
    logits = torch.cat(logits) if logits else torch.empty(0)
    labels = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    positions = torch.cat(ids) if ids else torch.empty(0, dtype=torch.long)
    world_size = trainer.world_size
    if world_size > 1:
        shares: list = [None] * world_size
        torch.distributed.all_gather_object(shares, (logits, labels, positions))
        if not trainer.is_global_zero:
            return torch.empty(0), torch.empty(0, dtype=torch.long), []
        shares = [share for share in shares if len(share[1])] or [(logits, labels, positions)]
        logits, labels, positions = (torch.cat(parts) for parts in zip(*shares, strict=True))
    order = positions.argsort()
    return logits[order], labels[order], positions[order].tolist()


def gather_unreadable(trainer: L.Trainer) -> list[str]:
    """The test images every process skipped as unreadable, on the first process."""
    bad_images = getattr(trainer.datamodule, "bad_images", {}).get("test")
    seen = list(bad_images.seen) if bad_images is not None else []
    if trainer.world_size > 1:
        shares: list = [None] * trainer.world_size
        torch.distributed.all_gather_object(shares, seen)
        seen = [path for share in shares for path in share]
    return sorted(set(seen))


def flat_settings(config: dict, sections: Sequence[str], prefix: str = "") -> dict[str, str | int | float | bool]:
    """The scalar settings of ``sections`` of a resolved config, by dotted key; lists as text."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if not prefix and key not in sections:
            continue
        if isinstance(value, dict):
            flat.update(flat_settings(value, sections, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, bool | int | float | str) for v in value):
            flat[name] = str(list(value))
    return flat


class HParams(L.Callback):
    """TensorBoard's HParams tab with real results: after the test, the run's settings (the scalar values of the
    config ``sections``) against the best ``val/acc``, the test accuracy, loss and NLL, as ``hp/*``
    metrics. ``tensorboard --logdir <sweep directory>`` then compares every trial of a sweep side by side.

    Other loggers get the settings when the run starts.

    A sweep's trial shows only the settings its command line set (the searched parameters, which TensorBoard
    would otherwise bury among the hundred that every trial shares), and a pruned trial shows up too, with
    the best ``val/acc`` it reached and no test results.
    """

    def __init__(self, sections: Sequence[str] = SETTINGS):
        self.sections = list(sections)
        self.settings_logged = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The settings to every other logger (CSV's hparams.yaml, W&B's config, MLflow's parameters) at the
        start; TensorBoard gets them with the results."""
        metadata = run_metadata_of(trainer)
        if self.settings_logged or metadata is None:
            return
        self.settings_logged = True
        settings = flat_settings(metadata["config"], self.sections)
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(settings)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from optuna import TrialPruned  # only where a run ends early

        if isinstance(exception, TrialPruned):
            self._log(trainer, pl_module)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = tensorboard(trainer)
        metadata = run_metadata_of(trainer)
        if logger is None or metadata is None or not trainer.is_global_zero:
            return
        tested = checkpoint_val_metrics(trainer.ckpt_path)[0] if trainer.ckpt_path else {}
        best = tested.get(
            "val/acc_best", float(pl_module.val_acc_best.compute()) if hasattr(pl_module, "val_acc_best") else None
        )
        results = {"hp/val_acc_best": best}
        if trainer.state.fn == TrainerFn.TESTING:
            results.update(
                {
                    f"hp/test_{k[5:]}": float(v)
                    for k, v in trainer.callback_metrics.items()
                    if k in ("test/acc", "test/loss", "test/nll")
                }
            )
        settings = flat_settings(metadata["config"], self.sections)
        if metadata["config"].get("trial"):
            chosen = [o.split("=", 1)[0].lstrip("+~") for o in metadata.get("overrides") or [] if "=" in o]
            settings = {k: settings[k] for k in chosen if k in settings} or settings
        logger.log_metrics({k: v for k, v in results.items() if v is not None}, step=trainer.global_step)
        # Every run declares all the metrics, a pruned one too: TensorBoard takes the columns of a directory
        # of runs from whichever run it reads first.
        writer = logger.experiment._get_file_writer()
        for summary in hparams(settings, dict.fromkeys(HP_METRICS, 0.0)):
            writer.add_summary(summary, trainer.global_step)
