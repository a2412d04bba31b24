"""Features of a frozen backbone, computed once per split and kept: in memory for the process (a sweep's trials
share them) and on disk, keyed by what determines them, for later runs."""

import hashlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2.functional import to_pil_image

from image_classification.data.datamodule import TransformedSubset
from image_classification.data.images import BadImages, collate_readable
from image_classification.errors import DataError
from image_classification.files import atomic_path

log = logging.getLogger(__name__)
# Features a process keeps in memory (a sweep's trials reuse them without reading the disk again).
MEMORY_ENTRIES = 6
# Features of a cache file computed again, for images drawn at random, before the file is used
SPOT_CHECKS = 8
_memory: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def resolve_device(device: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; any other name as torch reads it."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def _array_digest(values: Any) -> str | None:
    if values is None:
        return None
    return hashlib.sha256(np.asarray(list(values), dtype=np.int64).tobytes()).hexdigest()


def dataset_identity(dataset: Dataset) -> dict[str, Any]:
    """What says which images a split holds: the dataset's class and root, the subset's indices, the files and
    labels where the dataset lists them (``samples``, ``targets``). The images' content is not read: replace
    files in place and clear the cache."""
    base = getattr(dataset, "dataset", dataset)
    samples = getattr(base, "samples", None)
    return {
        "dataset": f"{type(base).__module__}.{type(base).__qualname__}",
        "root": str(getattr(base, "root", "")),
        "size": len(dataset),
        "indices": _array_digest(getattr(dataset, "indices", None)),
        "samples": hashlib.sha256(repr(list(samples)).encode()).hexdigest() if samples is not None else None,
        "targets": _array_digest(getattr(base, "targets", None)),
        "transform": repr(getattr(dataset, "transform", None)),
    }


class FeatureCache:
    """Computes a frozen backbone's features of each split once, with the evaluation transforms (per image and
    per batch, no augmentation), and keeps them.

    The key of a split's features is a digest of the backbone's architecture, weights and precision, the
    transforms and the split's images (see :func:`dataset_identity`): a later run, or a sweep's next trial,
    with the same key reads them back instead of running the backbone; a change to any of them computes new ones.

    Args:
        backbone: a :class:`~image_classification.networks.Backbone` (frozen, eval mode).
        cache_dir: where the features are saved (``<key>.pt``); None keeps them in memory only.
        batch_size: images per forward pass.
        device: ``auto`` (the GPU when there is one), ``cpu``, ``cuda``, ``cuda:1``, ...
        num_workers: loader worker processes reading the images.
        transform: ``data``: the data config's evaluation transforms (per image and per batch); ``backbone``:
            the backbone's own preprocessing in their place (``Backbone.eval_transform()``: a pretrained timm
            or open_clip model's resize, crop and normalization), on the dataset's images.
    """

    def __init__(
        self,
        backbone: nn.Module,
        cache_dir: str | Path | None = None,
        batch_size: int = 256,
        device: str = "auto",
        num_workers: int = 0,
        transform: str = "data",
    ):
        if transform not in ("data", "backbone"):
            raise ValueError(f"data.features.transform must be data or backbone, got {transform!r}")
        self.backbone = backbone
        self.transform = transform
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.num_workers = num_workers
        self.computed: list[str] = []  # the splits this instance had to compute, not read back

    def describe(self) -> dict[str, Any]:
        """The backbone's architecture, precision and weights digest."""
        return {
            "architecture": repr(getattr(self.backbone, "network", self.backbone)),
            "dtype": str(getattr(self.backbone, "dtype", "")),
            "weights_sha256": self.backbone.weights_digest(),
        }

    def key(self, dataset: Dataset, batch_transform: Callable | None) -> str:
        identity = {
            "backbone": self.describe(),
            "data": dataset_identity(dataset),
            "batch_transform": repr(batch_transform),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]

    def __call__(
        self, split: str, dataset: Dataset, batch_transform: Callable | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, labels)`` of ``dataset`` (N x D float32 and N int64, in the dataset's order)."""
        if self.transform == "backbone":
            dataset, batch_transform = self._with_backbone_transform(dataset), None
        key = self.key(dataset, batch_transform)
        if key in _memory:
            _memory.move_to_end(key)
            log.info(f"{split} features: reused from memory ({key})")
            return _memory[key]
        path = self.cache_dir / f"{key}.pt" if self.cache_dir is not None else None
        saved = self.read(path, split, dataset, batch_transform) if path is not None and path.is_file() else None
        if saved is not None:
            features, labels = saved
            log.info(f"{split} features: read from {path}")
        else:
            features, labels = self.compute(split, dataset, batch_transform)
            self.computed.append(split)
            if path is not None:
                with atomic_path(path) as tmp:
                    torch.save({"features": features, "labels": labels}, tmp)
        _memory[key] = (features, labels)
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)
        return _memory[key]

    def read(
        self, path: Path, split: str, dataset: Dataset, batch_transform: Callable | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The features saved in ``path`` if they are whole and are the split's (one row of this backbone's
        features for each of its images, their labels, and the features of :data:`SPOT_CHECKS` images drawn at
        random computed again and found the same), else None, saying why: they are then computed again. A cache
        folder can be shared, or written by someone else: its files are data to check, not results to trust."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            features, labels = saved["features"], saved["labels"]
        except Exception as err:  # truncated, corrupt, not a dict of tensors: the cache is no one's to trust
            log.warning(f"{split} features: {path} cannot be read ({type(err).__name__}), computing them again")
            return None
        expected = dataset_labels(dataset)
        why = None
        if not (isinstance(features, torch.Tensor) and isinstance(labels, torch.Tensor)):
            why = "not tensors"
        elif features.ndim != 2 or features.shape != (len(dataset), self.backbone.num_features):
            why = f"{tuple(features.shape)} features for {len(dataset)} images of {self.backbone.num_features}"
        elif not features.is_floating_point() or labels.shape != (len(dataset),):
            why = "not a feature and a label per image"
        elif expected is not None and not torch.equal(labels.long(), expected):
            why = "labels that are not the split's"
        elif not self.spot_check(features, dataset, batch_transform):
            why = f"features that are not this backbone's of the {split} images (checked {SPOT_CHECKS} at random)"
        if why:
            log.warning(f"{split} features: {path} holds {why}, computing them again")
            return None
        return features.float(), labels.long()

    def spot_check(self, features: torch.Tensor, dataset: Dataset, batch_transform: Callable | None) -> bool:
        """Whether the features of :data:`SPOT_CHECKS` of the images, drawn at random (unpredictably: a planted
        file cannot know which), computed now, are the saved ones, within what another device or batch size
        changes (1% of the features' scale; 5% at half precision)."""
        drawn = random.SystemRandom().sample(range(len(dataset)), min(SPOT_CHECKS, len(dataset)))
        fresh = self.compute("", Subset(dataset, drawn), batch_transform, quiet=True)[0]
        tolerance = 1e-2 if self.backbone.dtype == torch.float32 else 5e-2
        return bool((features[drawn] - fresh).abs().max() <= tolerance * fresh.abs().max().clamp_min(1e-6))

    def _with_backbone_transform(self, dataset: Dataset) -> Dataset:
        transform = self.backbone.eval_transform()
        if transform is None:
            raise DataError(
                f"data.features.transform=backbone: {type(self.backbone.network).__name__} has no preprocessing "
                "of its own; use data.features.transform=data"
            )
        first = next((m for m in self.backbone.network.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None and first.in_channels != 3:  # its own preprocessing makes RGB images
            raise DataError(
                f"data.features.transform=backbone feeds the backbone RGB images, as its preprocessing makes them, "
                f"but it takes {first.in_channels} channels: build it for 3 (network.backbone.network.in_chans=3)"
            )
        images = getattr(dataset, "dataset", dataset)
        return TransformedSubset(images, getattr(dataset, "indices", None), OnPILImages(transform))

    @torch.no_grad()
    def compute(
        self, split: str, dataset: Dataset, batch_transform: Callable | None, quiet: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        # back where it was afterwards: the probe that shares this backbone is moved by Lightning, with the rest
        home = next(self.backbone.parameters(), torch.empty(0)).device
        self.backbone.to(self.device).eval()
        try:
            return self._compute(split, dataset, batch_transform, quiet, start)
        finally:
            self.backbone.to(home)

    def _compute(
        self, split: str, dataset: Dataset, batch_transform: Callable | None, quiet: bool, start: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bad_images = BadImages("skip", 0, split)  # what the workers could not read, told to this process
        if isinstance(dataset, TransformedSubset):
            dataset = TransformedSubset(dataset.dataset, dataset.indices, dataset.transform, bad_images)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate_readable,
        )
        features, labels = [], []
        for images, targets, *_ in loader:
            if not bad_images.queue.empty():  # each image has its features, or the split has none
                path, reason = bad_images.queue.get()
                raise DataError(
                    f"cannot read {path} ({reason}): cached features need every image of the {split} "
                    "set; fix or remove the file (python -m image_classification.check_data lists them)"
                )
            images, targets = images.to(self.device, non_blocking=True), targets.to(self.device)
            if batch_transform is not None:
                images, targets = batch_transform(images, targets)
            features.append(self.backbone(images).float().cpu())
            labels.append(targets.cpu())
        features, labels = torch.cat(features), torch.cat(labels).long()
        seconds = time.perf_counter() - start
        if not quiet:
            log.info(
                f"{split} features: {tuple(features.shape)} from {len(dataset)} images in {seconds:.1f} s "
                f"({len(dataset) / max(seconds, 1e-9):.0f} images/s)"
            )
        return features, labels


def dataset_labels(dataset: Dataset) -> torch.Tensor | None:
    """A subset's labels where its dataset lists them (``targets``) without reading an image, else None."""
    from image_classification.data.splits import dataset_targets

    base, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    targets = dataset_targets(base) if base is not None and indices is not None else None
    if targets is None:
        return None
    return torch.as_tensor(targets, dtype=torch.long)[torch.as_tensor(indices, dtype=torch.long)]


class OnPILImages:
    """``transform`` on images as RGB PIL images: a backbone's own preprocessing (timm's, open_clip's) expects
    them, and the datasets read files as uint8 tensors (grey ones with one channel)."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        image = to_pil_image(image) if isinstance(image, torch.Tensor) else image
        return self.transform(image.convert("RGB") if image.mode != "RGB" else image)

    def __repr__(self) -> str:  # what the cache key records: the preprocessing itself
        return repr(self.transform)


def clear_memory() -> None:
    """Forget the features kept in memory (the disk cache stays)."""
    _memory.clear()
