"""Datasets read from disk or bundled: digits, CIFAR-10, and folders of class subfolders."""

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

from image_classification.data.images import read_image
from image_classification.errors import DataError

SPLITS = ("train", "val", "test")


class Digits(Dataset):
    """scikit-learn's bundled 1,797 handwritten digits as 8x8 uint8 grey images; nothing to download."""

    classes = [str(i) for i in range(10)]

    def __init__(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        # 0..16 ink levels -> 0..255 so the usual uint8 -> float transforms apply unchanged.
        pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
        self.images = torch.from_numpy(pixels).unsqueeze(1)
        self.targets = digits.target.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        # A plain tensor, not a tv_tensors.Image: v2 transforms treat it as an image, with less dispatch cost.
        return self.images[index], self.targets[index]


class CIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 reading the same ``cifar-10-batches-py`` files, checking they exist but not their
    checksums, so a subset or a re-packed copy in the official format loads too.

    The files are pickles, and a folder can come from anyone: they are read by :class:`BatchUnpickler`, which
    builds nothing but the arrays, lists, dicts, text and numbers the format holds (torchvision's reader would
    run whatever a pickle says), and their contents are checked to be CIFAR-10's."""

    def __init__(self, root: str | Path, train: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False):  # fmt: skip
        torchvision.datasets.VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        if not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            batch = read_batch(Path(self.root, self.base_folder, name))
            data.append(batch["data"])
            self.targets.extend(batch["labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self._load_meta()

    def _check_integrity(self) -> bool:
        folder = Path(self.root, self.base_folder)
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = Path(self.root, self.base_folder, self.meta["filename"])
        if not path.is_file():
            raise RuntimeError(f"{path} not found. You can use download=True to download it")
        names = unpickle(path).get(self.meta["key"])
        if not (isinstance(names, list) and len(names) == 10 and all(isinstance(n, str) for n in names)):
            raise DataError(f"{path} does not name CIFAR-10's 10 classes in {self.meta['key']!r}")
        self.classes = names
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler for files that are data: it builds numpy arrays (of numbers), and the lists, dicts, text, bytes
    and numbers pickle makes by itself; any other object a pickle names (a function to call, a class to build) is
    refused, so reading such a file runs nothing."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a data file has no use for")
        found = super().find_class(module, name)
        return _empty_array if name == "_reconstruct" else found


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` as numpy pickles an array: empty, then filled from the bytes the file holds (so an
    array is never larger than its file); any other shape a pickle asks for is refused before it is allocated."""
    if subtype is not np.ndarray or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"it builds an array of shape {shape!r} the way numpy never pickles one")
    return np.ndarray.__new__(np.ndarray, (0,), dtype)


def unpickle(path: Path) -> dict[str, Any]:
    """A dict pickled in ``path`` (with Python 2's text read as latin-1, as CIFAR's files need), through
    :class:`BatchUnpickler`; one line if it is anything else."""
    try:
        with path.open("rb") as f:
            loaded = BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as err:
        raise DataError(f"{path} is refused: it is not a CIFAR-10 batch file ({err})") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch file: it holds a {type(loaded).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def read_batch(path: Path) -> dict[str, Any]:
    """A CIFAR-10 batch file: ``data``, N x 3072 uint8 pixels, and ``labels``, N class indices in 0-9."""
    batch = unpickle(path)
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        raise DataError(f"{path} is not a CIFAR-10 batch file: its data is not an N x 3072 array of bytes")
    if not (
        isinstance(labels, list) and len(labels) == len(data) and all(type(x) is int and 0 <= x < 10 for x in labels)
    ):
        raise DataError(f"{path} is not a CIFAR-10 batch file: its labels are not {len(data)} class indices in 0-9")
    return {"data": data, "labels": labels}


def _split_dirs(root: Path) -> list[str]:
    return [s for s in SPLITS if (root / s).is_dir()]


def _class_dirs(folder: Path) -> list[Path]:
    """The class folders of ``folder``: its subfolders, hidden ones (``.ipynb_checkpoints``) excepted."""
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _class_names(folder: Path) -> list[str]:
    """The class names of ``folder``; an error if it has none."""
    names = [d.name for d in _class_dirs(folder)]
    if not names:
        raise DataError(f"{folder} has no class subfolders: put each class's images in a folder of its own")
    return names


def _class_root(root: str | os.PathLike, layout: str = "image_folder") -> Path:
    """The folder whose subfolders are the classes: ``root/train`` for split layouts, else ``root``.
    ``layout``: ``imagenet`` for ImageNet's (made by prepare_imagenet), which the error then points to."""
    root = Path(root).expanduser()
    if not root.is_dir() and layout == "imagenet":
        raise DataError(
            f"data directory {root} does not exist: python -m image_classification.prepare_imagenet <the folder "
            f"of ILSVRC2012's downloaded files> {root} lays ImageNet out there"
        )
    if not root.is_dir():
        raise DataError(
            f"data directory {root} does not exist: set data.root to a folder of class subfolders "
            "or one with train/ (and optionally val/, test/) subfolders"
        )
    splits = _split_dirs(root)
    if splits and "train" not in splits:
        raise DataError(f"{root} has {'/, '.join(splits)}/ but no train/ folder")
    return root / "train" if splits else root


def image_folder_classes(root: str, layout: str = "image_folder") -> int:
    """How many classes an ImageFolder tree has (the ``${image_folder_classes:<root>[,imagenet]}`` resolver)."""
    return len(_class_names(_class_root(root, layout)))


class ImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder whose classes skip hidden folders, as :func:`image_folder_classes` does, and
    whose images are read whole as uint8 RGB tensors (:func:`~image_classification.data.images.read_image`: JPEGs
    decoded by libjpeg-turbo, unusual images converted, a broken file raises ``BadImage`` naming it). ``loader=
    image_classification.data.images.load_image`` reads PIL images instead, for transforms that need them."""

    def __init__(self, root: str, loader: Callable[[str], Any] = read_image, **kwargs: Any):
        super().__init__(root, loader=loader, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = _class_names(Path(directory))
        return classes, {name: i for i, name in enumerate(classes)}


def image_folder(root: str, split: str, **kwargs: Any) -> Dataset | None:
    """``root/<split>`` as an :class:`ImageFolder`, or ``root`` itself for ``train`` of a flat tree.

    Returns None when ``root`` has split subfolders but not this one (or is flat and ``split`` is not
    ``train``), so the DataModule holds out a fraction of train instead.
    """
    if split not in SPLITS:
        raise DataError(f"image_folder split must be one of {SPLITS}, got {split!r}")
    root_path = Path(root).expanduser()
    if _class_root(root_path) == root_path:  # flat tree: class folders directly under root
        path = root_path if split == "train" else None
    else:
        path = root_path / split if (root_path / split).is_dir() else None
    if path is None:
        return None
    empty = [
        d for d in _class_dirs(path) if not any(torchvision.datasets.folder.is_image_file(str(f)) for f in d.rglob("*"))
    ]
    if empty:
        raise DataError(
            f"class folder {empty[0]} has no images ({len(empty)} empty in {path}): "
            f"add {'/'.join(torchvision.datasets.folder.IMG_EXTENSIONS)} files or remove the folder"
        )
    return ImageFolder(str(path), **kwargs)
