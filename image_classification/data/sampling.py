"""The order images are served in: the training order a resumed run continues exactly, and evaluation shares.

Lightning resumes a checkpoint saved in the middle of an epoch at the right batch number, but its loader starts
the epoch over with a new shuffle: the resumed run trains on other images than the run that was never stopped,
some twice and some not at all. :class:`ResumableLoader` and :class:`EpochSampler` know the epoch's order and
how far the loader got; the DataModule keeps that in every checkpoint and the resumed loader continues from there.
(Lightning's own way, a loader with a ``state_dict``, restores it only where nothing asked for the loader before
the checkpoint was read; a schedule that counts the run's steps does.)
"""

import os
import secrets
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from image_classification.data.images import BadImages
from image_classification.errors import DataError


def shuffle_seed(world_size: int) -> int:
    """The seed of the training order: the run's ``seed`` (the same in every process), else a new random one
    (kept in the checkpoints, so a resumed run goes on in the same order), or 0 under DDP, where every process
    must shuffle alike."""
    seed = os.environ.get("PL_GLOBAL_SEED")  # what lightning.seed_everything set
    if seed is not None:
        return int(seed)
    return secrets.randbits(62) if world_size == 1 else 0


class EpochSampler(DistributedSampler):
    """Each epoch a permutation of the dataset drawn from ``seed`` and the epoch number (torch's
    ``DistributedSampler``: the same order on every process, each taking every ``num_replicas``-th image of it,
    the last share padded with images from the start), so an epoch's order can be drawn again.

    ``sample_seeds``: yield ``(index, seed)`` pairs instead of indices, a seed of its own for every image of
    every epoch (:class:`~image_classification.data.TransformedSubset` seeds its random transforms with it): an
    image is augmented alike whichever worker loads it. ``start``: images of this process's share of the
    epoch already served, skipped once (a resumed epoch).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, sample_seeds: bool = True):  # fmt: skip
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.sample_seeds = sample_seeds
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a resumed run that stopped at an epoch's end starts the next one whole
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        size = len(self.dataset)
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        seeds = torch.randint(2**62, (size,), generator=generator)
        padding = self.total_size - size
        order = torch.cat([order, order.repeat(padding // size + 1)[:padding]])
        seeds = torch.cat([seeds, seeds.repeat(padding // size + 1)[:padding]])
        share = slice(self.rank, self.total_size, self.num_replicas)
        start, self.start = self.start, 0
        order, seeds = order[share][start:].tolist(), seeds[share][start:].tolist()
        return iter(zip(order, seeds, strict=True)) if self.sample_seeds else iter(order)


class CheckedLoader(DataLoader):
    """A DataLoader after each of whose batches ``bad_images`` names and counts the image files its dataset
    skipped as unreadable, and stops the run when they are too many (or at the first, by config).

    Iterating starts the loader (and its workers) at the first batch asked for, not when ``iter`` is called:
    Lightning calls ``iter`` before it tells a resumed run's sampler its epoch.
    """

    def __init__(self, *args: Any, bad_images: BadImages | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bad_images = bad_images
        self.served = 0  # batches of the current pass served, those a resumed epoch skipped included

    def first_batch(self) -> int:
        """The number of the pass's first batch: past 0 in a resumed epoch."""
        return getattr(self.sampler, "start", 0) // (self.batch_size or 1)

    def __iter__(self) -> Iterator[Any]:
        images = len(self.dataset)
        self.served = self.first_batch()
        for batch in super().__iter__():
            self.served += 1
            if self.bad_images is not None:
                self.bad_images.check(images)
                # the pass's last batch also counts the pass: Lightning ends an epoch after its last batch
                # without asking the loader for more
                if self.served == len(self):
                    self.bad_images.end_epoch(images)
            yield batch


class ResumableLoader(CheckedLoader):
    """A training loader that says where it is (the epoch's seed and number, and how many of its images were
    served) and continues from there: a run resumed from a checkpoint saved mid-epoch serves the rest of that
    epoch, in the same order, and then the next epochs as the uninterrupted run would have. Its sampler is an
    :class:`EpochSampler`.
    """

    def position(self) -> dict[str, int]:
        return {"seed": self.sampler.seed, "epoch": self.sampler.epoch, "images": self.served * self.batch_size}

    def seek(self, state: dict[str, int]) -> None:
        """Continue where :meth:`position` was: the next batch served is the one after it."""
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):  # overfit_batches: Lightning put a sequential sampler in
            return
        if not all(type(state.get(key)) is int for key in ("seed", "images", "epoch")):
            raise DataError(
                "the checkpoint's training loader position is not one of an image loader (shards'?): resume it with "
                "the data it used"
            )
        sampler.seed = state["seed"]
        if state["images"] >= sampler.num_samples:  # saved after the epoch's last batch: the next epoch, whole
            sampler.set_epoch(state["epoch"] + 1)
        else:
            sampler.set_epoch(state["epoch"])
            sampler.start = state["images"]


class UnpaddedDistributedSampler(DistributedSampler):
    """An evaluation set shared among DDP processes in order (process ``rank`` takes every ``num_replicas``-th
    image) and without padding: together the processes see every image exactly once, so the synchronised
    metrics count each once. Lightning leaves a ``DistributedSampler`` as it is."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
