"""The real composed config (configs/train.yaml), shrunk for a CPU, and small datasets in the real on-disk
formats; nothing is downloaded."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

import image_classification  # noqa: F401  (registers the config resolvers)
from image_classification.config import run_config_policy

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# Quiet, CPU-only, no progress bars: what every test composes on top of the user's overrides.
TEST_OVERRIDES = [
    "print_config=false",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "++callbacks.rich_progress_bar=null",
    "++callbacks.rich_model_summary=null",
    "+trainer.enable_progress_bar=false",
    "+trainer.enable_model_summary=false",
]


def choices(group: str) -> list[str]:
    """Every choice of a config group: the file names in configs/<group>/."""
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_config(tmp_path: Path, *overrides: str) -> DictConfig:
    """configs/train.yaml with ``overrides``, writing under ``tmp_path``."""
    with initialize_config_dir(config_dir=str(CONFIGS)):
        cfg = compose(
            "train",
            overrides=[
                *TEST_OVERRIDES,
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.log_dir={tmp_path / 'logs'}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )
    with open_dict(cfg):  # the compose API has no hydra:runtime; nothing reads it once output_dir is set
        cfg.pop("hydra", None)
    return cfg


@pytest.fixture(autouse=True)
def run_policy():
    """Tests instantiate the run's own config as trainer.py does: under the run's policy."""
    with run_config_policy():
        yield


@pytest.fixture
def make_config(tmp_path):
    return lambda *overrides: compose_config(tmp_path, *overrides)


def write_mnist(root: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> None:
    """MNIST's four uncompressed idx files under root/MNIST/raw, as torchvision reads them."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 50, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose position is the label: learnable
            images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
        header = np.array([2051, n, 28, 28], dtype=">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes())


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> None:
    """CIFAR-10's python pickles (5 train batches, a test batch, batches.meta) under root/cifar-10-batches-py."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(i % 10) for i in range(per_batch)]
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)  # str keys, as the real files load
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)


def photos() -> dict[str, np.ndarray]:
    """Three real photographs bundled with scikit-image."""
    from skimage import data

    return {"cat": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut()}


def write_image_folder(root: Path, splits: tuple[str, ...] = ("train", "val", "test"), per_class: int = 6) -> Path:
    """Class folders of 48x48 crops of real photographs, as JPEG and PNG; ``splits=()`` writes a flat tree."""
    for split in splits or ("",):
        for label, image in photos().items():
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                y, x = 20 * i, 15 * i
                crop = Image.fromarray(image[y : y + 96 : 2, x : x + 96 : 2])
                crop.save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


WNIDS = ("n01440764", "n01443537", "n02012849")  # ImageNet's tench, goldfish and (bird) crane


def photo_crops(count: int, seed: int) -> list[Image.Image]:
    """``count`` different 48x48 crops of the bundled photographs."""
    images = list(photos().values())
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        image = images[i % len(images)]
        y, x = rng.integers(0, 200, size=2)
        crops.append(Image.fromarray(image[y : y + 96 : 2, x : x + 96 : 2]))
    return crops


def write_imagenet(root: Path, per_class: int = 4, val_per_class: int = 2) -> Path:
    """A prepared ImageNet layout in miniature: train/<wnid>/*.JPEG and val/<wnid>/*.JPEG."""
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, wnid in enumerate(WNIDS):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(photo_crops(count, seed=100 * c + (split == "val"))):
                crop.save(folder / f"{wnid}_{i}.JPEG")
    return root


def write_tiny_imagenet(root: Path, per_class: int = 6, val_per_class: int = 2) -> Path:
    """Tiny ImageNet as distributed, in miniature: wnids.txt, words.txt (two of three names), train/, val/."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text("n01440764\ttench, Tinca tinca\nn01443537\tgoldfish, Carassius auratus\n")
    annotations = []
    for c, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i, crop in enumerate(photo_crops(per_class, seed=c)):
            crop.resize((64, 64)).save(folder / f"{wnid}_{i}.JPEG")
        for i, crop in enumerate(photo_crops(val_per_class, seed=50 + c)):
            name = f"val_{c}_{i}.JPEG"
            (root / "val" / "images").mkdir(parents=True, exist_ok=True)
            crop.resize((64, 64)).save(root / "val" / "images" / name)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return root
