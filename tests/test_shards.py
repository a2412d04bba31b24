"""Shards: make_shards writes every image and label of a run's splits (leaving out and naming unreadable files),
data=shards reads them back, the training stream shares an epoch among DDP processes and loader workers with
each image once, and a resumed stream continues where it stopped."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, photo_crops, write_image_folder
from test_bad_images import BROKEN, write_awkward_folder
from test_errors import run_trainer

from image_classification.config import instantiate
from image_classification.data import Digits, Shards
from image_classification.data.images import read_image
from image_classification.make_shards import main as make_shards


def write_distinct_folder(root: Path, per_class: int = 16) -> Path:
    """train/val/test folders of 3 classes of different 48x48 photo crops, JPEG and PNG."""
    for s, split in enumerate(("train", "val", "test")):
        for c, name in enumerate(("astronaut", "cat", "coffee")):
            folder = root / split / name
            folder.mkdir(parents=True)
            count = per_class if split == "train" else per_class // 4
            for i, crop in enumerate(photo_crops(count, seed=100 * s + c)):
                crop.save(folder / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def shards_of(tmp_path, root, *options) -> Path:
    out = tmp_path / "shards"
    make_shards(["data=image_folder", f"data.root={root}", f"out={out}", "data.num_workers=2", *options])
    return out


def test_shards_hold_every_image_and_label_of_every_split(tmp_path):
    root = write_distinct_folder(tmp_path / "photos")
    out = shards_of(tmp_path, root)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["astronaut", "cat", "coffee"] and manifest["skipped"] == []
    for split in ("train", "val", "test"):
        files = sorted((root / split).rglob("*.*"))
        shards = Shards(str(out), split)
        assert len(shards) == len(files) == manifest["splits"][split]["images"]
        read = {}
        for i in range(len(shards)):
            image, label = shards[i]
            read[hashlib.sha1(image.numpy().tobytes()).hexdigest()] = label
        expected = {
            hashlib.sha1(read_image(f).numpy().tobytes()).hexdigest(): manifest["classes"].index(f.parent.name)
            for f in files
        }
        assert read == expected, split  # each image, decoded exactly as from its file, with its label
    assert [Path(f).parent.name for f, _ in Shards(str(out), "test").samples] == ["astronaut"] * 4 + ["cat"] * 4 + [
        "coffee"
    ] * 4


def test_images_held_in_memory_are_stored_losslessly_with_their_channels(tmp_path):
    out = tmp_path / "shards"
    make_shards(["data=digits", f"out={out}"])  # 8x8 grey digits, no files: stored as PNGs
    digits, shards = Digits(), Shards(str(out), "test")
    assert len(shards) == 359
    for i, (index, label) in enumerate(shards.samples):
        image, stored_label = shards[i]
        assert image.shape == (1, 8, 8) and torch.equal(image, digits[int(index)][0])
        assert stored_label == label == digits[int(index)][1]


def test_an_evaluation_split_in_a_ddp_process_holds_every_image(tmp_path, monkeypatch):
    """litdata counts a process's share; the evaluation loaders share the split among processes themselves."""
    from litdata.utilities.env import _DistributedEnv

    out = shards_of(tmp_path, write_distinct_folder(tmp_path / "photos"))
    monkeypatch.setattr(_DistributedEnv, "detect", classmethod(lambda cls: _DistributedEnv(2, 1, 1)))
    shards = Shards(str(out), "test")
    assert shards.distributed_env.world_size == 2 and len(shards) == 12
    assert len({hashlib.sha1(shards[i][0].numpy().tobytes()).hexdigest() for i in range(len(shards))}) == 12


def test_pre_resized_shards_keep_the_longer_side_within_max_side(tmp_path):
    root = write_image_folder(tmp_path / "photos", per_class=4)  # 48x48 crops
    out = shards_of(tmp_path, root, "max_side=32", "quality=95")
    shards = Shards(str(out), "test")  # an evaluation split: it lists its files
    for i, (file, _) in enumerate(shards.samples):
        image, _ = shards[i]
        assert image.shape == (3, 32, 32)
        original = torch.nn.functional.interpolate(read_image(file)[None].float(), size=32, mode="area")[0]
        assert (image.float() - original).abs().mean() < 6  # the same picture, smaller (JPEG at quality 95)


def test_unreadable_files_are_named_and_left_out_of_the_shards(tmp_path):
    root, _ = write_awkward_folder(tmp_path / "photos")
    command = [sys.executable, "-m", "image_classification.make_shards", "data=image_folder", f"data.root={root}",
               "data.num_workers=2", "data.max_bad_images=3"]  # fmt: skip
    result = subprocess.run([*command, f"out={tmp_path / 'shards'}"], cwd=ROOT, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for name, reason in BROKEN.items():
        assert len(re.findall(rf"Skipped an unreadable image: .*/cat/{name} \(.*{reason}", output)) == 1, name
    manifest = json.loads((tmp_path / "shards/manifest.json").read_text())
    assert sorted(Path(file).name for _, file, _ in manifest["skipped"]) == sorted(BROKEN)
    written = sum(split["images"] for split in manifest["splits"].values())
    assert written == sum(1 for f in root.rglob("*.*")) - len(BROKEN)

    stopped = subprocess.run([*command, "data.on_bad_image=raise", f"out={tmp_path / 'raise'}"], cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert re.search(r"cannot read .*/cat/(truncated|empty|notes)\.jpg", stopped.stderr), stopped.stderr[-2000:]
    assert not (tmp_path / "raise").exists()  # nothing half-written


def stream(make_config, out, rank=0, world_size=1, **overrides):
    """The training loader of data=shards as DDP process ``rank`` of ``world_size`` builds it; images uint8 as
    read (no transforms), so that each can be recognised."""
    options = {"batch_size": 4, "num_workers": 2, "image_size": 48, **overrides}
    cfg = make_config("data=shards", f"data.root={out}", "data.train_transform=null",
                      *(f"data.{key}={value}" for key, value in options.items()))  # fmt: skip
    datamodule = instantiate(cfg.data, "data")
    datamodule.trainer = SimpleNamespace(world_size=world_size, global_rank=rank, num_nodes=1)
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def fingerprints(batches) -> list[str]:
    return [hashlib.sha1(image.numpy().tobytes()).hexdigest() for images, _ in batches for image in images]


def test_two_processes_of_two_workers_read_each_image_once_per_epoch(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    root = write_distinct_folder(tmp_path / "photos")
    out = shards_of(tmp_path, root, "chunk_bytes=8KB")  # a few images per chunk: many chunks to share
    everything = {hashlib.sha1(read_image(f).numpy().tobytes()).hexdigest() for f in (root / "train").rglob("*.*")}
    loaders = [stream(make_config, out, rank, world_size=2) for rank in (0, 1)]
    epochs = []
    for _ in range(2):
        shares = [fingerprints(loader) for loader in loaders]
        assert len(shares[0]) == len(shares[1]) == len(everything) // 2
        assert sorted(shares[0] + shares[1]) == sorted(everything)  # each image exactly once
        epochs.append(shares[0])
    assert epochs[0] != epochs[1] and sorted(epochs[0]) != sorted(epochs[1])  # reshuffled, across chunks too


def test_a_resumed_stream_continues_where_it_stopped(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    root = write_distinct_folder(tmp_path / "photos")
    out = shards_of(tmp_path, root, "chunk_bytes=8KB")
    loader = stream(make_config, out)
    fingerprints(loader)  # epoch 1
    whole = fingerprints(loader)  # epoch 2, uninterrupted
    following = fingerprints(loader)
    stopped = stream(make_config, out)
    fingerprints(stopped)
    batches = iter(stopped)
    served = fingerprints([next(batches) for _ in range(5)])
    position = stopped.position()

    monkeypatch.setenv("PL_GLOBAL_SEED", "9")  # another seed: the position brings back the stopped run's
    resumed = stream(make_config, out)
    resumed.seek(position)
    rest = fingerprints(resumed)
    assert served + rest == whole and np.unique(rest).size == len(rest)
    assert fingerprints(resumed) == following  # the next epoch as the uninterrupted run's


@pytest.mark.slow
def test_a_run_trains_and_tests_on_shards(tmp_path):
    root = write_distinct_folder(tmp_path / "photos", per_class=8)
    out = shards_of(tmp_path, root)
    result = run_trainer(tmp_path, "data=shards", f"data.root={out}", "data.image_size=32", "data.batch_size=8",
                         "data.num_workers=2", "trainer.max_epochs=2", "logger=none", "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / "run/report.json").read_text())
    named = [Path(entry["id"]).parent.name for entry in report["examples"]]
    assert len(named) == 6 and set(named) == {"astronaut", "cat", "coffee"}


@pytest.mark.parametrize("missing", ["nowhere"])
def test_data_root_without_shards_is_one_clear_line(tmp_path, missing):
    from test_errors import assert_clear_error

    result = run_trainer(tmp_path, "data=shards", f"data.root={tmp_path / missing}")
    assert_clear_error(result, "manifest.json does not exist", "make_shards")


@pytest.mark.slow
def test_two_ddp_processes_train_on_shards_and_test_every_image_once(tmp_path):
    out = shards_of(tmp_path, write_distinct_folder(tmp_path / "photos", per_class=8))
    result = run_trainer(tmp_path, "trainer=ddp_cpu", "data=shards", f"data.root={out}", "data.image_size=32",
                         "data.batch_size=4", "data.num_workers=1", "trainer.max_epochs=2", "logger=none",
                         "hydra.run.dir=run")  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / "run/report.json").read_text())
    ids = [entry["id"] for entry in report["examples"]]
    assert len(ids) == len(set(ids)) == 6  # the test split's images, each once


def test_shards_of_grey_images_train_and_check_with_one_channel_normalization(make_config, tmp_path, monkeypatch):
    """make_shards of the embedded digits stores them grey; data=shards reads them back with one channel and
    normalizes them with one value, in a run and in check_data."""
    import trainer
    from image_classification.check_data import main as check_data

    out = tmp_path / "shards"
    make_shards([f"out={out}"])
    assert json.loads((out / "manifest.json").read_text())["channels"] == 1
    limits = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]
    trainer.train(make_config("data=shards", f"data.root={out}", "data.image_size=16", "data.num_workers=0",
                              "data.random_erasing=0.5", "trainer.max_epochs=1", "logger=none", *limits))  # fmt: skip
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "channels: 1" in config and "- 0.449" in config and "- 115" in config  # ImageNet's, as one grey value
    monkeypatch.chdir(tmp_path)
    assert check_data(["data=shards", f"data.root={out}"]) == 0


@pytest.mark.slow
def test_a_linear_evaluation_reads_its_features_from_shards(make_config, tmp_path):
    """Cached features read the training split in order (not streamed), by the held-out indices NumPy gives."""
    import trainer

    out = tmp_path / "shards"
    make_shards([f"out={out}"])
    cfg = make_config("experiment=linear-eval", "strategy=knn", "data=shards", f"data.root={out}",
                      "data.num_workers=0", "logger=none")  # fmt: skip
    assert trainer.train(cfg)["metrics"]["test/acc"] > 0.8
