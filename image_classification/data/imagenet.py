"""ImageNet (ILSVRC-2012) in its ``train/<wnid>/`` and ``val/<wnid>/`` layout, and Tiny ImageNet as it is
distributed. ``python -m image_classification.prepare_imagenet`` makes the first from the official files."""

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from image_classification.data.datasets import ImageFolder
from image_classification.data.images import read_image
from image_classification.errors import DataError

WNID = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000


def readable_names(wnids: Sequence[str], names: Sequence[str]) -> list[str]:
    """``names`` for the classes, the wnid appended where two classes share a name (ImageNet has two
    "crane" and two "maillot"), so every class keeps a metric of its own."""
    counts = Counter(names)
    return [f"{name} ({wnid})" if counts[name] > 1 else name for wnid, name in zip(wnids, names, strict=True)]


def imagenet_class_names(wnids: Sequence[str]) -> list[str]:
    """Human-readable names of the 1,000 ILSVRC-2012 classes, in wnid order (torchvision's weights metadata
    lists them; nothing is downloaded); the wnids themselves for any other set of classes."""
    if len(wnids) != IMAGENET_CLASSES or not all(WNID.fullmatch(w) for w in wnids):
        return list(wnids)
    from torchvision.models import ResNet50_Weights

    return readable_names(wnids, ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


class ImageNet(ImageFolder):
    """``root/<split>/<wnid>/*.JPEG``; ``classes`` are readable names, ``wnids`` the folder names."""

    def __init__(self, root: str | Path, split: str, **kwargs: Any):
        super().__init__(str(Path(root).expanduser() / split), **kwargs)
        self.wnids = list(self.classes)
        self.classes = imagenet_class_names(self.wnids)


def imagenet(root: str, split: str, **kwargs: Any) -> ImageNet:
    """The ``split`` folder (``train`` or ``val``) of a prepared ImageNet ``root``."""
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise DataError(
            f"{folder.absolute()} does not exist: data.root must hold train/ and val/ folders of class "
            "folders; python -m image_classification.prepare_imagenet makes them from the official files"
        )
    return ImageNet(root, split, **kwargs)


class TinyImageNet(Dataset):
    """Tiny ImageNet (200 classes, 64x64) as distributed: ``train/<wnid>/images/*.JPEG``, ``val/images/`` with
    ``val/val_annotations.txt``, ``wnids.txt`` and ``words.txt``. Its ``test/`` has no labels; the labelled
    ``val`` split is what papers report on."""

    def __init__(self, root: str | Path, split: str):
        root = Path(root).expanduser()
        if split not in ("train", "val"):
            raise DataError(f"Tiny ImageNet's labelled splits are train and val, not {split!r}")
        for needed in ("wnids.txt", split):
            if not (root / needed).exists():
                raise DataError(
                    f"{(root / needed).absolute()} does not exist: data.root must be the tiny-imagenet-200 folder"
                )
        self.wnids = (root / "wnids.txt").read_text().split()
        index = {wnid: i for i, wnid in enumerate(self.wnids)}
        words = {}
        if (root / "words.txt").is_file():
            for line in (root / "words.txt").read_text().splitlines():
                wnid, _, text = line.partition("\t")
                words[wnid] = text.split(",")[0].strip()
        self.classes = readable_names(self.wnids, [words.get(w, w) for w in self.wnids])
        if split == "train":
            self.samples = [
                (path, index[wnid])
                for wnid in self.wnids
                for path in sorted((root / "train" / wnid / "images").glob("*"))
            ]
        else:
            self.samples = []
            for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
                name, wnid = line.split("\t")[:2]
                self.samples.append((root / "val" / "images" / name, index[wnid]))
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        return read_image(path), label
