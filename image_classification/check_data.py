"""Check a dataset without training: every image of every split read, and what is wrong listed.

    python -m image_classification.check_data data=image_folder data.root=path/to/images
    python -m image_classification.check_data experiment=imagenet-resnet50 data.root=/data/imagenet

The overrides are trainer.py's: the splits are the ones a run would use (held-out ones included). Listed: each
unreadable file with its path and why (truncated, empty, not an image), the images of each class in each
split, classes without images in a split, and images with the same pixels in two splits (a test image that is
also a training image). Exits 1 when it found unreadable files, empty classes or duplicates, else 0.
"""

import hashlib
import logging
import sys
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from image_classification.config import instantiate, run_command, run_config_policy
from image_classification.data.datasets import SPLITS
from image_classification.data.images import BadImage

log = logging.getLogger("check_data")


class Scan(Dataset):
    """Each image of the splits, read as training reads it: ``(split, file, label, content hash, problem)``."""

    def __init__(self, datamodule: Any):
        self.items = []
        for split in SPLITS:
            dataset, indices = datamodule.in_order(split)
            files = datamodule.example_ids(split)
            self.items += [(split, dataset, index, file) for index, file in zip(indices, files, strict=True)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, str, int | None, str | None, str | None]:
        split, dataset, index, file = self.items[i]
        try:
            image, label = dataset[index]
        except BadImage as error:
            return split, str(file), None, None, error.reason
        pixels = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        return (
            split,
            str(file),
            int(label),
            hashlib.sha1(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest(),
            None,
        )


def check(cfg: DictConfig) -> int:
    """Scan the data ``cfg`` configures; log the findings; 1 if anything is wrong, else 0."""
    with run_config_policy():
        datamodule = instantiate(cfg.data, "data")
        datamodule.setup("fit")
    classes = datamodule.classes or [str(i) for i in range(datamodule.num_classes)]
    scan = Scan(datamodule)
    loader = DataLoader(scan, batch_size=None, num_workers=datamodule.loader_kwargs["num_workers"])
    unreadable, counts, by_hash = [], defaultdict(Counter), defaultdict(set)
    for split, file, label, digest, problem in loader:
        if problem is not None:
            unreadable.append((file, problem))
        else:
            counts[split][label] += 1
        if digest is not None:
            by_hash[digest].add((split, file))

    for split in SPLITS:
        listed = ", ".join(f"{classes[c]} {n}" for c, n in sorted(counts[split].items()))
        readable = sum(counts[split].values())
        log.info(f"{split}: {count(readable, 'readable image')}, {count(len(counts[split]), 'class')} ({listed})")
    empty = [(split, name) for split in SPLITS for c, name in enumerate(classes) if not counts[split][c]]
    duplicates = [sorted(files) for files in by_hash.values() if len({split for split, _ in files}) > 1]
    for file, problem in unreadable:
        log.warning(f"unreadable: {file} ({problem})")
    for split, name in empty:
        log.warning(f"empty class: {name} has no readable images in the {split} set")
    for files in duplicates:
        log.warning("the same image in two splits: " + " = ".join(f"{file} ({split})" for split, file in files))
    problems = len(unreadable) + len(empty) + len(duplicates)
    log.info(
        f"{count(len(scan), 'image')} checked: {len(unreadable)} unreadable, {count(len(empty), 'empty class')}, "
        f"{count(len(duplicates), 'image')} in more than one split" + ("" if problems else ": nothing to fix")
    )
    return 1 if problems else 0


def count(n: int, noun: str) -> str:
    """``1 image``, ``2 images``, ``1 class``, ``3 classes``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def main(argv: list[str] | None = None) -> int:
    overrides = ["paths.output_dir=logs/check_data", "print_config=false"]
    status = run_command("train", check, __doc__, [*(sys.argv[1:] if argv is None else argv), *overrides])
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
