"""Classify images with a trained model: the top-k classes and their probabilities for each image.

    python -m image_classification.predict ckpt=<file> input=<image, folder or glob> [out=predictions.csv]
        [format=csv|json] [top_k=5] [batch_size=64] [device=auto] [num_workers=N]

The checkpoint's own evaluation preprocessing and class names are used (``load_model``); images that cannot be
read are listed with the reason, and the others are classified. The settings are in configs/predict.yaml.
"""

import csv
import glob
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.progress import track
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from image_classification.config import one_line, run_command
from image_classification.data.images import BadImage, read_image
from image_classification.errors import UserError
from image_classification.evaluation.features import resolve_device
from image_classification.files import atomic_path
from image_classification.inference import Preprocess, load_model

log = logging.getLogger("predict")
FORMATS = ("csv", "json")


def image_files(pattern: str) -> list[Path]:
    """The images ``pattern`` names: a file, every image file under a folder (hidden ones aside), or a glob."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMG_EXTENSIONS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    if not files:
        raise UserError(f"input={pattern} names no image: give an image file, a folder of images or a glob pattern")
    return sorted(files)


class ImageFiles(Dataset):
    """``(index, preprocessed image, None)``, or ``(index, None, reason)`` for a file that cannot be read."""

    def __init__(self, files: list[Path], preprocess: Preprocess):
        self.files = files
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        mode = "L" if self.preprocess.channels == 1 else "RGB"
        try:  # read and converted as training reads files; a broken one fails here, whole, naming itself
            image = read_image(self.files[index], mode)
        except BadImage as err:
            return index, None, err.reason
        try:
            return index, self.preprocess.image(image), None
        except Exception as err:  # a preprocessing that cannot take this image
            return index, None, f"{type(err).__name__}: {one_line(err)}"


def _unbatched(items: list) -> list:
    return items


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Classify ``cfg.input`` with ``cfg.ckpt``, write ``cfg.out``, and return what was written."""
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not one of {', '.join(FORMATS)}")
    if cfg.top_k < 1:
        raise UserError(f"top_k must be 1 or more, got {cfg.top_k}")
    files = image_files(str(cfg.input))
    model = load_model(cfg.ckpt, resolve_device(cfg.device), list(cfg.trusted_targets))
    loader = DataLoader(
        ImageFiles(files, model.preprocess),
        batch_size=cfg.batch_size,
        num_workers=min(cfg.num_workers, math.ceil(len(files) / cfg.batch_size) - 1),  # none for one batch
        collate_fn=_unbatched,
    )
    predictions, unreadable = {}, []
    # a progress bar on a terminal only: piped or logged, it would leave an empty line
    progress = track(
        loader, description=f"Classifying {len(files)} images", transient=True, disable=not sys.stdout.isatty()
    )
    for items in progress:
        readable = []
        for index, image, reason in items:
            if reason is not None:
                log.warning(f"Cannot read {files[index]}: {reason}")
                unreadable.append({"path": str(files[index]), "reason": reason})
            else:
                readable.append((index, image))
        if not readable:
            continue
        probabilities = model.logits([image for _, image in readable]).float().softmax(dim=1)
        top = probabilities.topk(min(cfg.top_k, probabilities.shape[1]), dim=1)
        for (index, _), values, classes in zip(readable, top.values.tolist(), top.indices.tolist(), strict=True):
            predictions[index] = {
                "path": str(files[index]),
                "top_k": [
                    {"class": model.name(c), "index": c, "probability": round(p, 6)}
                    for c, p in zip(classes, values, strict=True)
                ],
            }
    result = {
        "checkpoint": str(cfg.ckpt),
        "predictions": [predictions[i] for i in sorted(predictions)],
        "unreadable": unreadable,
    }
    write(result, Path(cfg.out), cfg.format)
    log.info(
        f"{len(predictions)} images classified, {len(unreadable)} unreadable: {cfg.out}"
        + (f" (and {unreadable_path(Path(cfg.out))})" if unreadable and cfg.format == "csv" else "")
    )
    return result


def unreadable_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.unreadable.csv")


def write(result: dict[str, Any], out: Path, format: str) -> None:
    """The predictions as one JSON document, or as CSV with the unreadable images in a CSV of their own."""
    if format == "json":
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        return
    k = max((len(p["top_k"]) for p in result["predictions"]), default=0)
    header = ["path", *[f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "probability")]]
    with atomic_path(out) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in result["predictions"]:
            writer.writerow([p["path"], *[v for t in p["top_k"] for v in (t["class"], t["probability"])]])
    errors = unreadable_path(out)
    if result["unreadable"]:
        with atomic_path(errors) as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "reason"])
            writer.writerows([u["path"], u["reason"]] for u in result["unreadable"])
    else:
        errors.unlink(missing_ok=True)  # not a list left from an earlier run


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    return run_command("predict", predict, __doc__, argv)


if __name__ == "__main__":
    main()
