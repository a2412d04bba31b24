"""Write a dataset as shards for ``data=shards``: every split a run would use, as litdata chunks.

    python -m image_classification.make_shards data=imagenet data.root=/data/imagenet out=/data/shards max_side=320
    python -m image_classification.make_shards data=image_folder data.root=path/to/images out=path/to/shards

The overrides are trainer.py's, so the splits are the ones a run of that data config uses (held-out ones
included, from ``data.split_seed``); ``python trainer.py data=shards data.root=<out>`` then trains on them.
Each image is stored as its file's bytes, or with ``max_side=N``, when its longer side is longer than N, resized
to N (antialiased) and stored as a JPEG of ``quality``. Unreadable files are named, counted and left out, as
training does it (``data.on_bad_image``, ``data.max_bad_images``). ``out/manifest.json`` lists the classes, the
images of each split and class, and the files left out. The shards are written beside ``out`` and moved there
when complete: an interrupted conversion leaves nothing at ``out``.

Options: ``out`` (a new folder), ``max_side`` (null: the files as they are), ``quality`` (90), ``chunk_bytes``
(the size of each chunk file, ``64MB``), ``data.num_workers`` (processes that read and resize).
"""

import io
import json
import logging
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import simplejpeg
import torch
from litdata.streaming.writer import BinaryWriter
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from image_classification.config import instantiate, run_command, run_config_policy
from image_classification.data.datasets import SPLITS
from image_classification.data.images import BadImage
from image_classification.data.shards import MANIFEST
from image_classification.errors import UserError

log = logging.getLogger("make_shards")


def encode(image: torch.Tensor, quality: int) -> bytes:
    """A uint8 C x H x W image as a JPEG, its colour subsampled 4:2:0 as cameras and PIL save them (a quarter
    faster to decode than 4:4:4)."""
    pixels = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    if image.shape[0] == 1:
        return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="GRAY")
    return simplejpeg.encode_jpeg(pixels, quality=quality, colorspace="RGB", colorsubsampling="420")


def png(image: torch.Tensor) -> bytes:
    """A uint8 C x H x W image as a PNG."""
    out = io.BytesIO()
    TF.to_pil_image(image).save(out, format="PNG")
    return out.getvalue()


class Encoded(Dataset):
    """Each image of a split as it will be stored: ``(file, label, bytes, None)``, or ``(file, None, None, why)``
    for a file that cannot be read."""

    def __init__(self, datamodule: Any, split: str, max_side: int | None, quality: int):
        self.dataset, self.indices = datamodule.in_order(split)
        self.files = datamodule.example_ids(split)
        self.max_side, self.quality = max_side, quality

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[str, int | None, bytes | None, str | None]:
        file = self.files[i]
        try:
            image, label = self.dataset[self.indices[i]]
        except BadImage as error:
            return str(file), None, None, error.reason
        image = TF.pil_to_tensor(image) if isinstance(image, PIL.Image.Image) else image
        height, width = image.shape[-2:]
        if self.max_side is not None and max(height, width) > self.max_side:
            scale = self.max_side / max(height, width)
            size = [max(1, round(height * scale)), max(1, round(width * scale))]
            return str(file), int(label), encode(TF.resize(image, size, antialias=True), self.quality), None
        if isinstance(file, str):
            return file, int(label), Path(file).read_bytes(), None
        return str(file), int(label), png(image), None  # an image held in memory (digits, CIFAR-10): lossless


def convert(cfg: DictConfig) -> dict[str, Any]:
    """Write the shards ``cfg`` describes; returns the manifest."""
    out = Path(cfg.out).expanduser().absolute()
    if out.exists():
        raise UserError(f"out={out} already exists: choose a new folder, or delete it first")
    if cfg.max_side is not None and cfg.max_side < 1:
        raise UserError(f"max_side must be a positive number of pixels or null, got {cfg.max_side}")
    with run_config_policy():
        datamodule = instantiate(cfg.data, "data")
        datamodule.setup("fit")
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    classes = datamodule.classes or [str(i) for i in range(datamodule.num_classes)]
    manifest: dict[str, Any] = {
        "classes": classes,
        "channels": datamodule.channels or 3,  # how the images are decoded: grey (1) or RGB
        "source": {"data": cfg.data.train_set.get("_target_"), "root": cfg.data.get("root")},
        "max_side": cfg.max_side,
        "quality": cfg.quality if cfg.max_side is not None else None,
        "splits": {},
        "skipped": [],
    }
    start = time.perf_counter()
    for split in SPLITS:
        dataset = Encoded(datamodule, split, cfg.max_side, cfg.quality)
        loader = DataLoader(dataset, batch_size=None, num_workers=datamodule.loader_kwargs["num_workers"])
        writer = BinaryWriter(str(partial / split), chunk_bytes=cfg.chunk_bytes)
        bad_images = datamodule.bad_images[split]  # the run's policy for the split: data.on_bad_image, max_bad_images
        counts, files, written = Counter(), [], 0
        for file, label, data, problem in loader:
            if problem is not None:
                bad_images.skipped(BadImage(file, problem))
                bad_images.check(len(dataset))
                manifest["skipped"].append([split, file, problem])
                continue
            # the file's name as bytes: litdata would take a string ending in .jpg for an image to read and store
            writer[written] = {"image": data, "label": label, "file": file.encode()}
            written += 1
            counts[label] += 1
            files.append([file, label])
        bad_images.end_epoch(len(dataset))
        writer.done()
        writer.merge(1)
        manifest["splits"][split] = {
            "images": written,
            "per_class": {classes[c]: counts[c] for c in range(len(classes))},
            **({"files": files} if split != "train" else {}),  # evaluation reports name the images
        }
        log.info(f"{split}: {written} images written, {len(dataset) - written} unreadable left out")
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    partial.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info(f"Shards of {sum(s['images'] for s in manifest['splits'].values())} images written to {out} "
             f"({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return manifest


def main(argv: list[str] | None = None) -> int:
    overrides = ["paths.output_dir=logs/make_shards", "print_config=false"]
    run_command("make_shards", convert, __doc__, [*(sys.argv[1:] if argv is None else argv), *overrides])
    return 0


if __name__ == "__main__":
    sys.exit(main())
