"""Unlabeled images: any dataset with its labels dropped, and any folder of images. Both yield
``(image, index)``: the index stands in for a label, so a self-supervised task can tell images apart (a jigsaw
puzzle's evaluation permutation is a function of it)."""

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch.utils.data import Dataset

from image_classification.data.images import read_image
from image_classification.errors import DataError


class Unlabeled(Dataset):
    """Any dataset with its labels replaced by the image's index: ``Unlabeled(Digits())`` pretrains on the
    digits without knowing which digit each is; held-out splits of it are drawn at random."""

    def __init__(self, dataset: Dataset | Callable[[], Dataset]):
        # a factory (a `_partial_` config) is called here, so that nothing is read before the DataModule's setup
        self.dataset = dataset if isinstance(dataset, Dataset) else dataset()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], index


class UnlabeledImages(Dataset):
    """Every image file under ``root``, in any nested layout, as uint8 RGB tensors with their index (read as
    :func:`~image_classification.data.images.read_image` reads them)."""

    def __init__(self, root: str | Path):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"data directory {root.absolute()} does not exist: set data.root to a folder of images")
        extensions = torchvision.datasets.folder.IMG_EXTENSIONS
        self.files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in extensions
            and p.is_file()
            and not any(s.startswith(".") for s in p.relative_to(root).parts)
        )
        if not self.files:
            raise DataError(f"{root.absolute()} holds no images ({'/'.join(extensions)}) in any of its folders")
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image(self.files[index]), index
