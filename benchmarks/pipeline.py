"""Input-pipeline speed: JPEG files to a normalized float batch on the training device, through torchvision's
``ImageFolder`` (PIL decoding, per-image v2 transforms to normalized floats, a ``DataLoader``) and through
ours (``data=image_folder``: libjpeg-turbo decoding to uint8 tensors, uint8 crops, normalization of the whole
batch on the device; and ``data=shards``, the same images written by ``make_shards`` pre-resized), with the
same worker count and batch size, in one run.

    python benchmarks/pipeline.py [--images 2000] [--workers N] [--batch-size 64] [--repeats 3]

The images are real photographs (scikit-image's, cropped and rescaled at random to about 500x375, saved as
JPEG at quality 90, in 4 classes), made once under ``--root``. Training: decode, RandomResizedCrop 224, flip;
evaluation: resize 256, centre crop 224. Prints images/s of each (the median of the repeats, each a full pass),
the ratios to the baseline, and the mean and std of the batches' pixels, which agree when the outputs do.

The device is this machine's CPU: our uint8 batches are normalized in the main process, beside the loader's
workers, on the same cores. The rows marked GPU leave that to the device, as a GPU run does: they measure
what the CPU must deliver then (the baseline normalizes in its workers either way).
"""

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_classification.config import compose, instantiate, quiet_library_noise, run_config_policy  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLASSES = ("astronaut", "coffee", "chelsea", "rocket")


def write_photos(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs (quality 90, about 500x375) cut from scikit-image's photographs into train/ and val/
    (80/20) of 4 class folders; nothing is written when ``root`` already holds them."""
    import skimage.data

    done = root / f".{count}"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    photos = {name: Image.fromarray(getattr(skimage.data, name)()) for name in CLASSES}
    for i in range(count):
        name = CLASSES[i % len(CLASSES)]
        photo = photos[name]
        # a random crop of 60-100% of each side, rescaled to a long side of 450-550 px
        w, h = (int(side * rng.uniform(0.6, 1.0)) for side in photo.size)
        x, y = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
        long_side = int(rng.integers(450, 551))
        # 4:3 like most photographs, two in three of them landscape
        size = (long_side, int(long_side * 0.75)) if i % 3 else (int(long_side * 0.75), long_side)
        image = photo.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
        split = "val" if i % 5 == 0 else "train"
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:05d}.jpg", quality=90)
    done.touch()
    return root


def baseline_loader(root: Path, split: str, training: bool, args) -> torch.utils.data.DataLoader:
    """torchvision's ImageFolder, PIL, per-image v2 transforms ending in normalized floats."""
    crop = (
        [v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()]
        if training
        else [v2.Resize(256, antialias=True), v2.CenterCrop(224)]
    )
    transform = v2.Compose([*crop, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    dataset = torchvision.datasets.ImageFolder(str(root / split), transform=transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=training,
        num_workers=args.workers,
    )


class Ours:
    """A DataModule composed from ``overrides``, its loaders and batch transforms as training uses them."""

    def __init__(self, overrides: list[str], args):
        with run_config_policy():
            cfg = compose(
                [
                    *overrides,
                    f"data.batch_size={args.batch_size}",
                    f"data.num_workers={args.workers}",
                    "data.persistent_workers=false",  # each pass starts its loader, as the baseline's does
                    "paths.output_dir=logs/pipeline",
                ]
            )
            self.datamodule = instantiate(cfg.data, "data")
            self.datamodule.setup("fit")

    def batch_transform(self, training: bool):
        return self.datamodule.train_batch_transform if training else self.datamodule.eval_batch_transform

    def loader(self, training: bool, normalize: bool = True):
        """The batches, normalized here (the device is this CPU), or as the loader hands them to the device
        (uint8: a GPU would normalize them)."""
        loader = self.datamodule.train_dataloader() if training else self.datamodule.val_dataloader()
        transform = self.batch_transform(training)
        for images, labels in loader:
            yield transform(images, labels) if normalize else (images, labels)


def timed_pass(batches, finish=None) -> tuple[float, torch.Tensor]:
    """Images/s over a whole pass, from the second batch on (the first one waits for the workers to start), and
    the per-channel mean and std of the pixels of a few images of each batch (after ``finish``, the batch
    transform the device would run, where the batches are not normalized yet)."""
    count, n, total, squares, start = 0, 0, 0.0, 0.0, None
    for images, labels in batches:
        if start is None:
            start = time.perf_counter()
        else:
            count += len(images)
        sample = images[:4] if finish is None else finish(images[:4], labels[:4])[0]
        assert sample.shape[1:] == (3, 224, 224) and sample.dtype == torch.float32
        total = total + sample.mean(dim=(0, 2, 3)) * len(sample)
        squares = squares + sample.square().mean(dim=(0, 2, 3)) * len(sample)
        n += len(sample)
    seconds = time.perf_counter() - start
    mean = total / n
    return count / seconds, torch.stack([mean, (squares / n - mean.square()).sqrt()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=len(__import__("os").sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "pipeline-benchmark")
    parser.add_argument("--no-shards", action="store_true", help="only the folder pipelines")
    args = parser.parse_args()
    quiet_library_noise()
    torch.set_num_threads(1)  # the main process only collates and normalizes; the workers do the rest
    folder = write_photos(args.root / "folder", args.images)
    shards = args.root / f"shards-{args.images}"
    if not args.no_shards and not (shards / "manifest.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "image_classification.make_shards", "data=image_folder", f"data.root={folder}",
             f"out={shards}", "max_side=256", f"data.num_workers={args.workers}"],
            check=True,
        )  # fmt: skip
    ours = {"folder": Ours(["data=image_folder", f"data.root={folder}", "data.test_fraction=0.01"], args)}
    if not args.no_shards:
        ours["shards"] = Ours(["data=shards", f"data.root={shards}"], args)
    for training in (True, False):
        split = "train" if training else "val"
        runs = {"torchvision": (functools.partial(baseline_loader, folder, split, training, args), None)}
        for name, o in ours.items():
            runs[name] = (functools.partial(o.loader, training), None)
            runs[f"{name}, GPU"] = (functools.partial(o.loader, training, False), o.batch_transform(training))
        rates = {name: [] for name in runs}
        stats = {}
        for _ in range(args.repeats):  # alternated, so that each sees the machine in the same state
            for name, (make, finish) in runs.items():
                rate, stats[name] = timed_pass(make(), finish)
                rates[name].append(rate)
        print(f"{'training' if training else 'evaluation'} ({split}, batch {args.batch_size}, {args.workers} workers)")
        base = statistics.median(rates["torchvision"])
        for name, values in rates.items():
            mean, std = (", ".join(f"{v:.3f}" for v in row) for row in stats[name])
            print(f"  {name:14s} {statistics.median(values):7.1f} images/s  x{statistics.median(values) / base:4.2f}  "
                  f"(runs {', '.join(f'{v:.0f}' for v in values)}; pixel mean {mean}, std {std})")  # fmt: skip


if __name__ == "__main__":
    main()
