"""The one DataModule that feeds every experiment.

A dataset here is anything indexable that returns ``(image, label)`` with the image as a PIL image or a
tensor; the DataModule applies the transforms, so a validation split carved out of a training set gets
evaluation transforms, not augmentation. Datasets are configured as ``_partial_`` factories: nothing is
read until ``setup``, and ``prepare_data`` (one process at a time) calls the ones that download.
"""

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from image_classification.data.datasets import SPLITS
from image_classification.data.images import BadImage, BadImages, collate_readable
from image_classification.data.sampling import (
    CheckedLoader,
    EpochSampler,
    ResumableLoader,
    UnpaddedDistributedSampler,
    shuffle_seed,
)
from image_classification.data.splits import dataset_targets, stratified_hold_out
from image_classification.errors import DataError, UserError
from image_classification.files import exclusive
from image_classification.randomness import seeded

log = logging.getLogger(__name__)
# Where the DataModule's state in a checkpoint says how far the training loader got in its epoch.
TRAIN_LOADER_KEY = "train_loader"

DatasetFactory = Callable[[], Dataset | None]


def usable_cpus() -> int:
    """The CPU cores this process may run on (the ``${usable_cpus:}`` resolver: loader worker defaults)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def held_out(fraction: float, size: int) -> int:
    """How many of ``size`` images a ``fraction`` holds out: at least one when the fraction is not zero."""
    return max(1, round(fraction * size)) if fraction > 0 and size > 1 else 0


class TransformedSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image. An image file the dataset cannot read
    (:class:`~image_classification.data.images.BadImage`) is handed to ``bad_images`` and comes out as ``None``,
    which the loader's collate leaves out; without ``bad_images`` it stops with one line naming the file.

    Args:
        with_ids: give ``(image, label, i)``: each sample says which of the subset's images it is, so that what a
            batch holds is known however many of its images could not be read (an evaluation's report).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None, transform: Callable | None,
                 bad_images: BadImages | None = None, with_ids: bool = False):  # fmt: skip
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.transform = transform
        self.bad_images = bad_images
        self.with_ids = with_ids

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int | tuple[int, int]):
        """``index``, or ``(index, seed)``: the image's random transforms draw from generators seeded with
        ``seed`` (the training sampler's :class:`~image_classification.data.sampling.EpochSampler`)."""
        index, seed = index if isinstance(index, tuple) else (index, None)
        sample = transformed(lambda: self.dataset[self.indices[index]], self.transform, self.bad_images, seed)
        return (*sample, index) if self.with_ids and sample is not None else sample


def transformed(read: Callable[[], tuple[Any, Any]], transform: Callable | None, bad_images: BadImages | None,
                seed: int | None = None) -> tuple[Any, Any] | None:  # fmt: skip
    """``read()``'s ``(image, label)`` with ``transform`` applied to the image, its random draws seeded with
    ``seed`` (when given). An unreadable image (:class:`~image_classification.data.images.BadImage`) is handed to
    ``bad_images`` and comes out as ``None``; without ``bad_images`` it stops with one line naming the file."""
    try:
        with seeded(seed) if seed is not None and transform is not None else contextlib.nullcontext():
            image, label = read()
            return (transform(image) if transform else image), label
    except BadImage as error:
        if bad_images is None:
            raise DataError(f"cannot read {error.path} ({error.reason}): fix or remove the file") from None
        bad_images.skipped(error)
        return None


def class_names(dataset: Dataset) -> list[str] | None:
    """The dataset's class names, where it says them (torchvision's ``classes`` attribute)."""
    names = getattr(dataset, "classes", None)
    return [str(n) for n in names] if names is not None else None


def transform_tree(name: str, transform: Any) -> Iterator[tuple[str, Any]]:
    """A transform and those it composes (``Compose``, ``RandomChoice``: their ``transforms``), with where
    each sits; torchvision's v2 containers keep them in plain lists, out of reach of ``nn.Module`` methods."""
    yield name, transform
    children = getattr(transform, "transforms", None)
    if isinstance(children, list | tuple | nn.ModuleList):
        for i, child in enumerate(children):
            yield from transform_tree(f"{name}.{i}", child)


class DataModule(L.LightningDataModule):
    """Train/val/test loaders from injected dataset factories and transforms.

    A missing val or test set (``None``, or a factory that returns None) is held out of the training set:
    ``test_fraction`` first, then ``val_fraction`` of the rest, stratified by class, by a permutation seeded
    with ``split_seed`` (independent of the run's ``seed``, so every run of an experiment is tested on the
    same images). ``test_fraction=1`` makes every image a test image, for an evaluation (set up for ``test``).

    Args:
        root: where the data lives, for the dataset configs to point at; checked to exist.
        download: fetch the data in ``prepare_data`` (the dataset configs pass it to their factories); None
            for data that cannot be downloaded.
        channels, image_size: what a transformed training image must be; checked on the first image, so a
            network configured from them (``${data.channels}``) fits the data.
        train_batch_transform, eval_batch_transform: ``(images, labels) -> (images, labels)`` on whole
            batches once they are on the training device (augmentation on the GPU, mixup); they follow the
            per-image ``train_transform`` / ``eval_transform``.
        features: a :class:`~image_classification.evaluation.FeatureCache`: serve each split as a frozen
            backbone's features of its images (computed once with the evaluation transforms, no augmentation)
            instead of the images: linear evaluation on cached features. None: the images.
        settings: the values a data config composes its transforms from (``crop_scale``, ``interpolation``,
            ``mix``, ``auto_augment``, ...), kept beside what uses them and in ``self.settings``.
    """

    def __init__(
        self,
        train_set: DatasetFactory,
        num_classes: int,
        root: str | None = None,
        download: bool | None = None,
        channels: int | None = None,
        image_size: int | None = None,
        val_set: DatasetFactory | None = None,
        test_set: DatasetFactory | None = None,
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        train_batch_transform: Callable | None = None,
        eval_batch_transform: Callable | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = False,
        features: Callable | None = None,
        on_bad_image: Literal["skip", "raise"] = "skip",
        max_bad_images: float = 0.001,
        **settings: Any,
    ):
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= test_fraction <= 1.0:  # 1: every image is tested (evaluating on a whole folder)
            raise DataError(f"data.test_fraction must be in [0, 1], got {test_fraction}")
        if not isinstance(split_seed, int) or split_seed < 0:
            raise DataError(f"data.split_seed must be a whole number, 0 or more, not {split_seed!r}")
        for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size or 1)):
            if not isinstance(size, int) or size < 1:
                raise DataError(f"data.{name} must be a positive whole number, got {size!r}")
        sizes = {
            "image_size": image_size,
            **{k: v for k, v in settings.items() if k.endswith(("image_size", "resize"))},
        }
        for name, size in sizes.items():
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
                raise DataError(f"data.{name} must be a positive number of pixels, got {size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise DataError(f"data.num_workers must be 0 (load in the main process) or more, got {num_workers!r}")
        self.factories = {"train": train_set, "val": val_set, "test": test_set}
        self.num_classes = num_classes
        self.root = root
        self.download = download
        self.channels = channels
        self.image_size = image_size
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.train_batch_transform = train_batch_transform
        self.eval_batch_transform = eval_batch_transform
        for name in ("eval_transform", "eval_batch_transform"):  # a transform that augments in training does not here
            for _, transform in transform_tree(name, getattr(self, name)):
                if isinstance(transform, nn.Module):
                    transform.eval()
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.loader_kwargs = dict(
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
        )
        self.drop_last = drop_last
        self.features = features
        self.bad_images = {split: BadImages(on_bad_image, max_bad_images, split) for split in SPLITS}
        self.settings = settings
        self.datasets: dict[str, Dataset] = {}
        self.images: dict[str, TransformedSubset] = {}  # each split's images, also when it is served as features
        self.classes: list[str] | None = None
        self._train_loader: ResumableLoader | Any = None  # or a StreamLoader of shards
        self._prepared = False
        self._resume_position: dict[str, int] | None = None  # where a resumed run's training loader starts

    def prepare_data(self) -> None:
        """Download the datasets when ``download`` is set, one process at a time (a lock file in ``root``):
        under DDP, whoever started the processes (Lightning, torchrun, SLURM), the first downloads and the
        others, once it is done, find the files there. Once per process: trainer.py prepares before Lightning
        would."""
        if not self.download or self._prepared:
            return
        root = self._root()
        with exclusive(root / ".prepare_data.lock") if root is not None else contextlib.nullcontext():
            for name, factory in self.factories.items():
                if factory is not None:
                    self._build(name, factory)
        self._prepared = True

    def _root(self) -> Path | None:
        return Path(self.root).expanduser().absolute() if self.root is not None else None

    def _build(self, name: str, factory: DatasetFactory) -> Dataset | None:
        try:
            return factory()
        except DataError:
            raise
        except (OSError, RuntimeError, ValueError) as err:  # torchvision's "Dataset not found", bad paths
            target = getattr(getattr(factory, "func", factory), "__qualname__", repr(factory))
            if "download=True" in str(err) and self.download is not None:  # torchvision's missing files
                raise DataError(
                    f"data.{name}_set ({target}): the dataset's files are not under {self._root()}: copy them "
                    "there (or point paths.data_dir at them), or add data.download=true to fetch them"
                ) from err
            raise DataError(f"data.{name}_set ({target}) could not be loaded: {err}") from err

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets and splits once (idempotent, so ``train`` can validate data before fitting)."""
        if self.datasets:
            return
        root = self._root()
        if root is not None and not self.download and not root.is_dir():
            fix = ", or add data.download=true to fetch the data" if self.download is not None else ""
            raise DataError(f"data directory {root} does not exist: set paths.data_dir or data.root{fix}")
        full_train = self._build("train", self.factories["train"])
        sets = {
            name: self._build(name, factory) if factory is not None else None
            for name, factory in self.factories.items()
            if name != "train"
        }
        n_test = held_out(self.test_fraction, len(full_train)) if sets["test"] is None else 0
        n_val = held_out(self.val_fraction, len(full_train) - n_test) if sets["val"] is None else 0
        testing_all = sets["test"] is None and self.test_fraction == 1.0
        if testing_all and stage != "test":
            raise DataError(
                "data.test_fraction=1 tests every image and leaves none to train on: it is for "
                "python -m image_classification.evaluate (a fraction below 1 holds out a test set)"
            )
        if sets["test"] is None and n_test == 0:
            raise DataError("there is no test set: configure data.test_set or set data.test_fraction > 0")
        if sets["val"] is None and n_val == 0 and not testing_all:
            raise DataError("there is no validation set: configure data.val_set or set data.val_fraction > 0")
        stream = isinstance(full_train, IterableDataset)
        if stream and (n_test or n_val):
            missing = "test" if n_test else "val"
            raise DataError(f"data.{missing}_set is needed: a streamed training set has no images to hold out")
        streamed = stream and self.features is None  # cached features read every image once, in order
        targets = dataset_targets(full_train) if not streamed else None
        (test, val), train = stratified_hold_out(targets, len(full_train), (n_test, n_val), self.split_seed)
        held = {"test": test, "val": val}
        self.held_out_splits = [name for name in ("val", "test") if sets[name] is None]
        train_transform = self.eval_transform if self.features is not None else self.train_transform
        if streamed:  # shards: read and transformed in the stream, each process and worker its own part
            self.datasets["train"] = full_train.stream(train_transform, self.bad_images["train"])
        else:
            self.datasets["train"] = TransformedSubset(full_train, train, train_transform, self.bad_images["train"])
        for name in ("val", "test"):  # each sample with its position in the split: the report names the right file
            if sets[name] is None:
                self.datasets[name] = TransformedSubset(
                    full_train, held[name], self.eval_transform, self.bad_images[name], with_ids=True
                )
                how = "stratified by class" if targets is not None else "at random (the dataset lists no targets)"
                log.info(f"{name} set: {len(held[name])} images held out of the training set, {how}")
            else:
                self.datasets[name] = TransformedSubset(
                    sets[name], None, self.eval_transform, self.bad_images[name], with_ids=True
                )
        self.classes = class_names(full_train)
        self._check_classes(full_train, sets)
        for name in ("test",) if testing_all else SPLITS:
            if len(self.datasets[name]) == 0:
                raise DataError(f"the {name} set is empty: check the data folder and the split fractions")
        image, label = self._first_readable("test" if testing_all else "train")
        training = self.features is None and not testing_all
        batch_transform = self.train_batch_transform if training else self.eval_batch_transform
        if batch_transform is not None:
            image = batch_transform(image[None], torch.tensor([label]))[0][0]
        self._check_image(image)
        self.example = image  # a training image as the network gets it (for the network's check)
        self.images = dict(self.datasets)
        if self.features is not None:
            for name in SPLITS:
                features, labels = self.features(name, self.images[name], self.eval_batch_transform)
                ids = [torch.arange(len(labels))] if name != "train" else []  # as the images' samples have them
                self.datasets[name] = TensorDataset(features, labels, *ids)

    def _first_readable(self, split: str) -> tuple[Any, Any]:
        """The first sample of ``split`` whose image can be read (for the checks of ``setup``)."""
        dataset = self.datasets[split]
        for index in range(len(dataset)):
            sample = dataset[index]
            if sample is not None:
                return sample[:2]
        raise DataError(f"none of the {split} set's {len(dataset)} images can be read")

    def cached_features(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, labels)`` of a split served as features (``data.features``)."""
        if self.features is None or not isinstance(self.datasets.get(split), TensorDataset):
            raise DataError("this needs cached features: set data.features (strategy=cached, logistic or knn)")
        return self.datasets[split].tensors[:2]

    def in_order(self, split: str) -> tuple[Dataset, list[int]]:
        """A split's images as the dataset they come from and their indices in it, untransformed (a streamed
        split, by :meth:`~image_classification.data.shards.Shards.in_order`)."""
        subset = self.images[split]
        if isinstance(subset, TransformedSubset):
            return subset.dataset, subset.indices
        dataset = subset.in_order()
        return dataset, list(range(len(dataset)))

    def example_ids(self, split: str) -> list[str | int]:
        """Each image of a split, in loader order: its file where the dataset lists files (``samples``), else
        its index in the dataset it comes from."""
        dataset, indices = self.in_order(split)
        samples = getattr(dataset, "samples", None)
        return [str(samples[i][0]) if samples is not None else int(i) for i in indices]

    def _check_classes(self, train: Dataset, others: dict[str, Dataset | None]) -> None:
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise DataError(
                f"data.num_classes is {self.num_classes} but the training set has {len(self.classes)} classes: "
                f"set data.num_classes={len(self.classes)}"
            )
        for name, dataset in others.items():
            names = class_names(dataset) if dataset is not None else None
            if names is not None and self.classes is not None and names != self.classes:
                raise DataError(f"the {name} set's classes {names} differ from the training set's {self.classes}")

    def _check_image(self, image) -> None:
        """A transformed training image is C x H x W, or a stack of them (a jigsaw puzzle's tiles)."""
        shape = tuple(getattr(image, "shape", ()))
        if len(shape) < 3:
            raise DataError(f"a transformed training image should be a CxHxW tensor, got {type(image).__name__}")
        if self.channels is not None and shape[-3] != self.channels:
            raise DataError(f"data.channels is {self.channels} but transformed images have {shape[-3]}: {shape}")
        if self.image_size is not None and shape[-2:] != (self.image_size, self.image_size):
            raise DataError(f"data.image_size is {self.image_size} but transformed images are {shape[-2:]}")

    def _stateful_transforms(self) -> dict[str, nn.Module]:
        """The transforms with a state, by where they sit (``train_batch_transform.2``)."""
        names = ("train_transform", "eval_transform", "train_batch_transform", "eval_batch_transform")
        found = {where: t for name in names for where, t in transform_tree(name, getattr(self, name))}
        return {where: t for where, t in found.items() if isinstance(t, nn.Module) and t.state_dict()}

    def state_dict(self) -> dict[str, Any]:
        """The state of the transforms that keep one (a jigsaw puzzle's permutation set), and where the training
        loader is in its epoch: Lightning saves it in every checkpoint and gives it back to a resumed or tested run,
        which then uses the very same state and continues the epoch where the checkpoint was saved."""
        state = {name: transform.state_dict() for name, transform in self._stateful_transforms().items()}
        if self._train_loader is not None:
            state[TRAIN_LOADER_KEY] = self._train_loader.position()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict):
            raise DataError(f"the checkpoint's data state is a {type(state_dict).__name__}, not a mapping")
        for name, transform in self._stateful_transforms().items():
            if name not in state_dict:
                continue
            current = transform.state_dict()
            saved = state_dict[name]
            if not (isinstance(saved, dict) and all(isinstance(v, torch.Tensor) for v in saved.values())):
                raise DataError(f"the checkpoint's state of data.{name} is not a mapping of tensors")
            if any(k not in saved or not torch.equal(v.cpu(), saved[k].cpu()) for k, v in current.items()):
                log.warning(
                    f"data.{name}: the checkpoint's state differs from what the config builds; using the checkpoint's"
                )
            transform.load_state_dict(saved)
        fitting = self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
        if fitting and TRAIN_LOADER_KEY in state_dict:  # resuming: the training loader continues the epoch
            if not isinstance(state_dict[TRAIN_LOADER_KEY], dict):
                raise DataError("the checkpoint's training loader position is not a mapping: it is damaged")
            self._resume_position = state_dict[TRAIN_LOADER_KEY]
            if self._train_loader is not None:
                self._train_loader.seek(self._resume_position)
                self._resume_position = None

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.features is not None:  # features: the batch transforms ran before the backbone
            return batch
        training = self.trainer is not None and self.trainer.training
        transform = self.train_batch_transform if training else self.eval_batch_transform
        if transform is None:
            return batch
        images, labels, *ids = batch  # an evaluation batch's ids pass through
        return [*transform(images, labels), *ids]

    def _loader(self, name: str) -> DataLoader:
        world_size, rank = getattr(self.trainer, "world_size", 1), getattr(self.trainer, "global_rank", 0)
        dataset = self.datasets[name]
        options = dict(
            batch_size=self.batch_size if name == "train" else self.eval_batch_size,
            # the loader's own generator seeds its workers: starting one draws nothing from the global generator,
            # whose state a checkpoint keeps for the training step
            generator=torch.Generator().manual_seed(0),
            collate_fn=collate_readable,  # the images skipped as unreadable left out
            bad_images=self.bad_images[name],
            # features are tensors in memory: worker processes would only add copies
            **(self.loader_kwargs if self.features is None else {}),
        )
        if name == "train":
            if isinstance(dataset, IterableDataset):  # shards: each process streams its own share
                from image_classification.data.shards import StreamLoader

                dataset.share(world_size, rank, getattr(self.trainer, "num_nodes", 1), shuffle_seed(world_size))
                self._train_loader = StreamLoader(dataset, drop_last=self.drop_last, **options)
            else:
                sampler = EpochSampler(dataset, world_size, rank, seed=shuffle_seed(world_size),
                                       sample_seeds=isinstance(dataset, TransformedSubset))  # fmt: skip
                self._train_loader = ResumableLoader(dataset, sampler=sampler, drop_last=self.drop_last, **options)
            if self._resume_position is not None:
                self._train_loader.seek(self._resume_position)
                self._resume_position = None
            return self._train_loader
        # Lightning's distributed sampler pads the last share with repeated images; scores would count them
        sampler = UnpaddedDistributedSampler(dataset, world_size, rank) if world_size > 1 else None
        return CheckedLoader(dataset, sampler=sampler, **options)

    def train_batches(self, processes: int = 1) -> int:
        """Training batches each of ``processes`` processes gets in an epoch (set up, nothing read)."""
        per_process = math.ceil(len(self.datasets["train"]) / processes)
        return (math.floor if self.drop_last else math.ceil)(per_process / self.batch_size)

    def check_training_batches(self, processes: int, limit: int | float | None) -> None:
        """Refuse a run that would train on no batch (Lightning only says so, then tests the initial weights):
        a training split smaller than a batch with ``drop_last``, or ``limit_train_batches`` 0 or a fraction of
        it that is less than one batch."""
        if isinstance(limit, float) and 0 < limit < 1 and int(self.train_batches(processes) * limit) == 0:
            raise UserError(
                f"trainer.limit_train_batches={limit} of the {self.train_batches(processes)} training batches is "
                "less than one: give a larger fraction, or a number of batches (trainer.limit_train_batches=1)"
            )
        if limit == 0:
            raise UserError(
                "trainer.limit_train_batches=0 trains on no batch: to test a checkpoint, run "
                "python -m image_classification.evaluate ckpt_path=<file>"
            )
        if self.train_batches(processes) == 0:
            images = len(self.datasets["train"])
            share = f" ({math.ceil(images / processes)} for each of {processes} processes)" if processes > 1 else ""
            if not images:
                raise DataError("the training split has no images: nothing to train on")
            raise DataError(
                f"the training split has {images} images{share}, fewer than a batch (data.batch_size="
                f"{self.batch_size}), and data.drop_last=true leaves out an incomplete batch: no batch to train "
                "on; lower data.batch_size, set data.drop_last=false, or add images"
            )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
