"""Lay out ImageNet (ILSVRC-2012) for ``data=imagenet``: ``DEST/train/<wnid>/*.JPEG`` and ``DEST/val/<wnid>/*.JPEG``.

    python -m image_classification.prepare_imagenet SOURCE DEST

SOURCE holds the official files in any of the forms they come in:
- the archives ``ILSVRC2012_img_train.tar`` (one tar per class inside), ``ILSVRC2012_img_val.tar`` and
  ``ILSVRC2012_devkit_t12.tar.gz``;
- extracted: ``train/<wnid>/`` folders, the 50,000 validation images in one flat ``val/`` folder, and the
  devkit (its folder or archive), or Kaggle's ``LOC_val_solution.csv`` (Kaggle's ``ILSVRC/Data/CLS-LOC/``
  layout is found as it is).

Images from folders are hard-linked into DEST (copied across file systems); images from archives are
written there. SOURCE is never changed. Every image is written once, under its own file name, through a
temporary file, and an image already in place is left alone, so the command can be rerun after an
interruption. It ends by counting: every source image in DEST, nothing else there, the classes and the
validation images the official release has, and exits 1 naming what is wrong.
"""

import argparse
import csv
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from image_classification.files import atomic_path

log = logging.getLogger("prepare_imagenet")

TRAIN_TAR, VAL_TAR, DEVKIT_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
KAGGLE_CSV = "LOC_val_solution.csv"
WNID = re.compile(r"n\d{8}")
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass
class Report:
    """What was done and what is wrong."""

    written: Counter = field(default_factory=Counter)  # split -> images written now
    present: Counter = field(default_factory=Counter)  # split -> images already in place
    problems: list[str] = field(default_factory=list)


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def write_stream(stream: BinaryIO, target: Path, size: int, report: Report, split: str) -> None:
    """``target`` from ``stream`` through a temporary file beside it, unless a file of that size is there."""
    if target.is_file() and target.stat().st_size == size:
        report.present[split] += 1
        return
    with atomic_path(target) as tmp, tmp.open("wb") as out:
        shutil.copyfileobj(stream, out)
    report.written[split] += 1


def place_file(source: Path, target: Path, report: Report, split: str) -> None:
    """``target`` as a hard link to ``source`` (a copy across file systems), unless it is there already."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        report.present[split] += 1
        return
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
    report.written[split] += 1


def find(source: Path, *names: str) -> Path | None:
    """The first of ``names`` under ``source``, directly or in Kaggle's ``ILSVRC/Data/CLS-LOC/`` layout."""
    for base in (source, source / "ILSVRC" / "Data" / "CLS-LOC"):
        for name in names:
            if (base / name).exists():
                return base / name
    return None


# --- validation labels ------------------------------------------------------------------------------------


def devkit_labels(devkit: Path) -> dict[int, str]:
    """Validation image number -> wnid from the devkit's ``data/meta.mat`` and ground-truth file, parsed as
    torchvision's ``parse_devkit_archive`` does (its own function also checks the archive's MD5, which a
    test's fake devkit cannot match, and keeps the parsers private)."""
    import scipy.io

    try:  # the devkit's files are data: anything but ILSVRC-2012's layout is one line
        synsets = scipy.io.loadmat(str(devkit / "data" / "meta.mat"), squeeze_me=True)["synsets"]
        idx_to_wnid = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # the 1,000 leaf classes
        truth = (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text().split()
        return {number: idx_to_wnid[int(idx)] for number, idx in enumerate(truth, start=1)}
    except (OSError, ValueError, TypeError, KeyError, IndexError) as err:
        raise SystemExit(
            f"{devkit} is not ILSVRC-2012's devkit ({type(err).__name__}: {err}): its data/meta.mat and "
            "ILSVRC2012_validation_ground_truth.txt must be the released ones"
        ) from None


def kaggle_labels(path: Path) -> dict[int, str]:
    """Validation image number -> wnid from Kaggle's ``LOC_val_solution.csv`` (the first box's class)."""
    labels = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            number = VAL_NUMBER.search(row["ImageId"])
            if number:
                labels[int(number[1])] = row["PredictionString"].split()[0]
    return labels


def validation_labels(source: Path, work: Path) -> dict[int, str]:
    devkit = find(source, "ILSVRC2012_devkit_t12")
    if devkit is None and find(source, DEVKIT_TAR) is not None:
        with tarfile.open(find(source, DEVKIT_TAR)) as tar:
            tar.extractall(work, filter="data")
        devkit = work / "ILSVRC2012_devkit_t12"
    if devkit is not None:
        return devkit_labels(devkit)
    csv_path = find(source, KAGGLE_CSV)
    if csv_path is not None:
        return kaggle_labels(csv_path)
    raise SystemExit(
        f"no validation labels in {source}: expected the devkit ({DEVKIT_TAR} or its folder) or {KAGGLE_CSV}"
    )


# --- the two splits ----------------------------------------------------------------------------------------


def tar_images(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, BinaryIO]]:
    for member in tar:
        if member.isfile():
            stream = tar.extractfile(member)
            if stream is not None:
                yield member, stream


def prepare_train(source: Path, dest: Path, report: Report) -> Counter:
    """The training images into ``dest/train/<wnid>/``; returns the count per class in the source."""
    counts: Counter = Counter()
    folder, archive = find(source, "train"), find(source, TRAIN_TAR)
    if folder is not None:
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir() and WNID.fullmatch(d.name)):
            for image in sorted(p for p in class_dir.iterdir() if is_image(p.name)):
                place_file(image, dest / "train" / class_dir.name / image.name, report, "train")
                counts[class_dir.name] += 1
    elif archive is not None:
        with tarfile.open(archive, mode="r|") as outer:
            for member, stream in tar_images(outer):
                wnid = Path(member.name).stem
                if not WNID.fullmatch(wnid):
                    report.problems.append(f"{archive}: unexpected member {member.name}")
                    continue
                with tarfile.open(fileobj=stream, mode="r|") as inner:
                    for image, data in tar_images(inner):
                        name = Path(image.name).name
                        if is_image(name):
                            write_stream(data, dest / "train" / wnid / name, image.size, report, "train")
                            counts[wnid] += 1
    else:
        raise SystemExit(f"no training images in {source}: expected train/ or {TRAIN_TAR}")
    return counts


def prepare_val(source: Path, dest: Path, labels: dict[int, str], report: Report) -> Counter:
    """The validation images into ``dest/val/<wnid>/``; returns the count per class in the source."""
    counts: Counter = Counter()

    def label(name: str) -> str | None:
        number = VAL_NUMBER.search(name)
        wnid = labels.get(int(number[1])) if number else None
        if wnid is None:
            report.problems.append(f"validation image {name} has no label: it is not placed")
        elif not WNID.fullmatch(wnid):  # the labels' file is data: a class is a WordNet id, never a path
            report.problems.append(f"validation image {name} is labelled {wnid!r}, not a WordNet id: it is not placed")
            return None
        return wnid

    folder, archive = find(source, "val"), find(source, VAL_TAR)
    if folder is not None:
        for image in sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p.name)):
            wnid = label(image.name)
            if wnid is not None:
                place_file(image, dest / "val" / wnid / image.name, report, "val")
                counts[wnid] += 1
    elif archive is not None:
        with tarfile.open(archive, mode="r|") as tar:
            for member, stream in tar_images(tar):
                name = Path(member.name).name
                wnid = label(name) if is_image(name) else None
                if wnid is not None:
                    write_stream(stream, dest / "val" / wnid / name, member.size, report, "val")
                    counts[wnid] += 1
    else:
        raise SystemExit(f"no validation images in {source}: expected val/ or {VAL_TAR}")
    return counts


# --- checks ------------------------------------------------------------------------------------------------


def check(dest: Path, train: Counter, val: Counter, expect_classes: int, expect_val: int, report: Report) -> None:
    """Every source image is in ``dest`` once, nothing else is, and the release's counts hold."""
    for split, source_counts in (("train", train), ("val", val)):
        found = Counter(p.parent.name for p in (dest / split).glob("*/*") if p.is_file())
        for wnid in sorted(set(source_counts) | set(found)):
            if found[wnid] != source_counts[wnid]:
                report.problems.append(
                    f"{split}/{wnid}: {found[wnid]} images in {dest}, {source_counts[wnid]} in the source"
                )
        leftovers = sorted(p.name for p in (dest / split).rglob(".*.tmp"))
        if leftovers:
            report.problems.append(f"{split}: unfinished temporary files {', '.join(leftovers[:5])}")
    if len(train) != expect_classes:
        report.problems.append(f"train: {len(train)} classes, the release has {expect_classes}")
    if sum(val.values()) != expect_val:
        report.problems.append(f"val: {sum(val.values())} images, the release has {expect_val}")
    unknown = sorted(set(val) - set(train))
    if unknown:
        report.problems.append(f"val: classes without training images: {', '.join(unknown[:10])}")


def prepare(source: Path, dest: Path, expect_classes: int = 1000, expect_val: int = 50_000) -> Report:
    """Lay out ``source`` under ``dest``; the report lists what was written and what is wrong."""
    report = Report()
    with tempfile.TemporaryDirectory() as work:
        labels = validation_labels(source, Path(work))
    train = prepare_train(source, dest, report)
    val = prepare_val(source, dest, labels, report)
    check(dest, train, val, expect_classes, expect_val, report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="where the official files are")
    parser.add_argument("dest", type=Path, help="the data.root to make")
    parser.add_argument("--expect-classes", type=int, default=1000, help="classes the release has (1000)")
    parser.add_argument("--expect-val", type=int, default=50_000, help="validation images it has (50000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.source.is_dir():
        sys.exit(f"{args.source} is not a folder")
    report = prepare(args.source, args.dest, args.expect_classes, args.expect_val)
    for split in ("train", "val"):
        log.info(f"{split}: {report.written[split]} images written, {report.present[split]} already in place")
    for problem in report.problems:
        log.error(f"problem: {problem}")
    if report.problems:
        sys.exit(1)
    log.info(f"{args.dest} is ready: python trainer.py data=imagenet data.root={args.dest}")


if __name__ == "__main__":
    main()
