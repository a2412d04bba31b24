"""ImageNet's layouts: the prepared folders, Tiny ImageNet as distributed, and the preparation command."""

import csv
import io
import tarfile

import numpy as np
import pytest
import scipy.io
from conftest import WNIDS, photo_crops, write_imagenet, write_tiny_imagenet

from image_classification.config import instantiate
from image_classification.data import TinyImageNet
from image_classification.data.imagenet import imagenet_class_names, readable_names
from image_classification.errors import DataError
from image_classification.prepare_imagenet import main as prepare_main
from image_classification.prepare_imagenet import prepare


def test_imagenet_folder_with_readable_names_and_official_val_as_test(make_config, tmp_path):
    root = write_imagenet(tmp_path / "imagenet", per_class=10, val_per_class=3)
    cfg = make_config(
        "data=imagenet", f"data.root={root}", "data.image_size=32", "data.val_fraction=0.1", "data.batch_size=8"
    )
    assert cfg.data.num_classes == 3
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    assert [len(datamodule.datasets[s]) for s in ("train", "val", "test")] == [27, 3, 9]
    assert datamodule.classes == list(WNIDS)  # not the 1,000 classes: the wnids themselves
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape[1:] == (3, 32, 32)


def test_the_thousand_classes_get_torchvision_names_and_repeated_names_their_wnid():
    wnids = [f"n{i:08d}" for i in range(1000)]
    names = imagenet_class_names(wnids)
    assert names[0] == "tench" and names[999] == "toilet tissue" and len(set(names)) == 1000
    assert imagenet_class_names(wnids[:999]) == wnids[:999]  # not the 1,000 classes: wnids
    assert readable_names(["n1", "n2", "n3"], ["crane", "crane", "tench"]) == ["crane (n1)", "crane (n2)", "tench"]


def test_a_missing_imagenet_split_names_the_preparation_command(make_config, tmp_path):
    root = write_imagenet(tmp_path / "imagenet")
    (root / "val").rename(tmp_path / "elsewhere")
    cfg = make_config("data=imagenet", f"data.root={root}", "data.image_size=32")
    with pytest.raises(DataError, match="prepare_imagenet"):
        instantiate(cfg.data, "data").setup("fit")


def test_tiny_imagenet_is_read_as_distributed(make_config, tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    val = TinyImageNet(root, "val")
    assert len(val) == 6 and val.targets == [0, 0, 1, 1, 2, 2]
    assert val.classes == ["tench", "goldfish", "n02012849"]  # words.txt's first name; the wnid without one
    cfg = make_config("data=tiny_imagenet", f"data.root={root}", "data.num_classes=3", "data.num_workers=0")
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    assert [len(datamodule.datasets[s]) for s in ("train", "val", "test")] == [16, 2, 6]
    images, *_ = next(iter(datamodule.test_dataloader()))
    assert images.shape[1:] == (3, 64, 64)


# --- the preparation command, on the official files in miniature ----------------------------------------


def jpeg_bytes(crop) -> bytes:
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG")
    return buffer.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_official(source, per_class=3, val_count=7, archives=True):
    """ILSVRC-2012's files in miniature: train archive of class archives (or folders), flat validation
    images (archive or folder), and the devkit's meta.mat + ground truth (or Kaggle's CSV)."""
    source.mkdir(parents=True)
    rng = np.random.default_rng(0)
    val_wnids = [WNIDS[i] for i in rng.integers(0, len(WNIDS), size=val_count)]
    crops = photo_crops(len(WNIDS) * per_class + val_count, seed=7)
    train = {wnid: [jpeg_bytes(c) for c in crops[i * per_class : (i + 1) * per_class]] for i, wnid in enumerate(WNIDS)}
    val = {f"ILSVRC2012_val_{n:08d}.JPEG": jpeg_bytes(crops[-n]) for n in range(1, val_count + 1)}
    if archives:
        with tarfile.open(source / "ILSVRC2012_img_train.tar", "w") as outer:
            for wnid, images in train.items():
                inner = io.BytesIO()
                with tarfile.open(fileobj=inner, mode="w") as tar:
                    for i, data in enumerate(images):
                        add(tar, f"{wnid}_{i}.JPEG", data)
                add(outer, f"{wnid}.tar", inner.getvalue())
        with tarfile.open(source / "ILSVRC2012_img_val.tar", "w") as tar:
            for name, data in val.items():
                add(tar, name, data)
        devkit = source / "devkit_tmp" / "ILSVRC2012_devkit_t12" / "data"
        devkit.mkdir(parents=True)
        fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")]
        synsets = np.array(
            [(i + 1, wnid, wnid, "", 0) for i, wnid in enumerate(WNIDS)] + [(1001, "n00001740", "entity", "", 3)],
            dtype=fields,
        )
        scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
        ids = [WNIDS.index(w) + 1 for w in val_wnids]
        (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, ids)) + "\n")
        with tarfile.open(source / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            tar.add(devkit.parent, arcname="ILSVRC2012_devkit_t12")
        for path in sorted(source.joinpath("devkit_tmp").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        source.joinpath("devkit_tmp").rmdir()
    else:  # extracted, with Kaggle's CSV in its CLS-LOC layout
        base = source / "ILSVRC" / "Data" / "CLS-LOC"
        for wnid, images in train.items():
            (base / "train" / wnid).mkdir(parents=True)
            for i, data in enumerate(images):
                (base / "train" / wnid / f"{wnid}_{i}.JPEG").write_bytes(data)
        (base / "val").mkdir(parents=True)
        for name, data in val.items():
            (base / "val" / name).write_bytes(data)
        with (source / "LOC_val_solution.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageId", "PredictionString"])
            for (name, _), wnid in zip(val.items(), val_wnids, strict=True):
                writer.writerow([name.removesuffix(".JPEG"), f"{wnid} 1 2 30 40"])
    return train, dict(zip(val, val_wnids, strict=True))


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("archives", [True, False], ids=["archives", "extracted+kaggle"])
def test_prepare_imagenet_loses_nothing_and_is_safe_to_rerun(tmp_path, archives):
    train, val = write_official(tmp_path / "source", archives=archives)
    before = files(tmp_path / "source")
    report = prepare(tmp_path / "source", tmp_path / "imagenet", expect_classes=3, expect_val=7)
    assert report.problems == [] and report.written == {"train": 9, "val": 7}
    placed = files(tmp_path / "imagenet")
    expected_train = {f"train/{w}/{w}_{i}.JPEG": d for w, images in train.items() for i, d in enumerate(images)}
    assert {k: v for k, v in placed.items() if k.startswith("train/")} == expected_train
    assert sorted(k for k in placed if k.startswith("val/")) == sorted(f"val/{w}/{name}" for name, w in val.items())
    assert files(tmp_path / "source") == before, "the source is never changed"

    again = prepare(tmp_path / "source", tmp_path / "imagenet", expect_classes=3, expect_val=7)
    assert again.problems == [] and sum(again.written.values()) == 0 and again.present == {"train": 9, "val": 7}
    assert files(tmp_path / "imagenet") == placed


def test_prepare_imagenet_reports_what_is_wrong(tmp_path, caplog):
    write_official(tmp_path / "source", archives=False)
    csv_path = tmp_path / "source" / "LOC_val_solution.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:-1]) + "\n")  # one validation image loses its label
    stray = tmp_path / "imagenet" / "train" / WNIDS[0] / "stray.JPEG"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not from the source")
    with pytest.raises(SystemExit) as exit_:
        prepare_main([str(tmp_path / "source"), str(tmp_path / "imagenet")])  # the release's counts: 1000, 50000
    assert exit_.value.code == 1
    output = caplog.text
    assert "has no label" in output and f"train/{WNIDS[0]}: 4 images" in output
    assert "3 classes, the release has 1000" in output and "6 images, the release has 50000" in output


def test_prepare_imagenet_places_nothing_outside_its_destination(tmp_path):
    """The labels' files are data: a validation label that is a path, not a WordNet id, places no image."""
    _, val = write_official(tmp_path / "source", archives=False)
    csv_path = tmp_path / "source" / "LOC_val_solution.csv"
    first = next(iter(val)).removesuffix(".JPEG")
    csv_path.write_text(csv_path.read_text().replace(f"{first},n", f"{first},../../../outside n"))
    report = prepare(tmp_path / "source", tmp_path / "imagenet", expect_classes=3, expect_val=7)
    assert any("not a WordNet id" in problem for problem in report.problems)
    assert not list(tmp_path.glob("**/outside*")) and report.written["val"] == 6


def test_a_devkit_that_is_not_ilsvrcs_is_one_line(tmp_path):
    write_official(tmp_path / "source")
    with tarfile.open(tmp_path / "source" / "ILSVRC2012_devkit_t12.tar.gz") as tar:
        tar.extractall(tmp_path / "source", filter="data")
    truth = tmp_path / "source" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    truth.write_text("7\n" * 7)  # a class the devkit's meta.mat does not have
    with pytest.raises(SystemExit, match="is not ILSVRC-2012's devkit \\(KeyError: 7\\)"):
        prepare(tmp_path / "source", tmp_path / "imagenet", expect_classes=3, expect_val=7)
