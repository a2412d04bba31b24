"""Splits, layouts and checks of the DataModule and the datasets."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import write_image_folder, write_mnist
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from image_classification.config import instantiate
from image_classification.data import stratified_hold_out, usable_cpus
from image_classification.errors import DataError


def setup_data(cfg):
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    return datamodule


def indices(datamodule, split):
    return set(datamodule.datasets[split].indices)


def test_digits_split_is_disjoint_complete_and_fixed_by_split_seed(make_config):
    first = setup_data(make_config())
    train, val, test = (indices(first, s) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 1797
    assert len(test) == round(0.2 * 1797) and len(val) == round(0.1 * (1797 - len(test)))
    again = setup_data(make_config("seed=7"))  # the run seed does not move the test set
    assert indices(again, "test") == test
    other = setup_data(make_config("data.split_seed=1"))
    assert indices(other, "test") != test


@pytest.mark.parametrize("training", [True, False])
def test_batch_transforms_augment_training_batches_only(make_config, training):
    datamodule = setup_data(make_config())
    datamodule.trainer = SimpleNamespace(training=training)
    images, labels, _ = next(iter(datamodule.val_dataloader()))  # and each image's position
    first, first_labels = datamodule.on_after_batch_transfer((images, labels), 0)
    second, _ = datamodule.on_after_batch_transfer((images, labels), 0)
    assert first.dtype == torch.float32 and torch.equal(first_labels, labels)
    expected = images.float() / 255 * 2 - 1  # ToDtype(scale) then Normalize(0.5, 0.5)
    if training:
        assert not torch.equal(first, second), "training batches are augmented anew each time"
    else:
        torch.testing.assert_close(first, expected)
        assert torch.equal(first, second)


def test_image_folder_with_train_val_test(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos")
    cfg = make_config("data=image_folder", f"data.root={root}", "data.image_size=32", "data.num_workers=0")
    assert cfg.data.num_classes == 3  # counted from the class folders
    datamodule = setup_data(cfg)
    assert datamodule.classes == ["astronaut", "cat", "coffee"]
    assert [len(datamodule.datasets[s]) for s in ("train", "val", "test")] == [18, 18, 18]


def test_image_folder_flat_tree_is_split_by_fractions(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos", splits=(), per_class=10)
    cfg = make_config(
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.test_fraction=0.2",
        "data.val_fraction=0.25",
    )
    datamodule = setup_data(cfg)
    assert [len(datamodule.datasets[s]) for s in ("train", "val", "test")] == [18, 6, 6]


def test_image_folder_without_val_holds_out_train(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos", splits=("train", "test"), per_class=10)
    cfg = make_config("data=image_folder", f"data.root={root}", "data.image_size=32", "data.val_fraction=0.1")
    datamodule = setup_data(cfg)
    assert [len(datamodule.datasets[s]) for s in ("train", "val", "test")] == [27, 3, 30]


def test_image_folder_ignores_hidden_folders(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos")
    for split in ("train", "val", "test"):
        (root / split / ".ipynb_checkpoints").mkdir()
    cfg = make_config("data=image_folder", f"data.root={root}", "data.image_size=32")
    assert cfg.data.num_classes == 3
    assert setup_data(cfg).classes == ["astronaut", "cat", "coffee"]


def test_image_folder_without_train_is_named(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos", splits=("val", "test"))
    cfg = make_config("data=image_folder", f"data.root={root}", "data.image_size=32")
    with pytest.raises(InterpolationResolutionError, match="has val/, test/ but no train/ folder"):
        OmegaConf.to_container(cfg.data, resolve=True)


def test_image_folder_empty_class_folder_is_named(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos")
    (root / "train" / "dog").mkdir()
    cfg = make_config("data=image_folder", f"data.root={root}", "data.image_size=32", "data.num_classes=3")
    with pytest.raises(DataError, match=r"class folder .*train/dog has no images"):
        setup_data(cfg)


def test_mismatched_classes_between_splits_fail(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos")
    (root / "val" / "coffee").rename(root / "val" / "tea")
    cfg = make_config("data=image_folder", f"data.root={root}", "data.image_size=32")
    with pytest.raises(DataError, match="val set's classes"):
        setup_data(cfg)


def test_num_classes_and_channels_are_checked_against_the_data(make_config):
    with pytest.raises(DataError, match="num_classes=10"):
        setup_data(make_config("data.num_classes=12"))
    with pytest.raises(DataError, match="data.channels is 3"):
        setup_data(make_config("data.channels=3"))


def test_mnist_reads_the_real_file_format(make_config, tmp_path):
    write_mnist(tmp_path / "data", n_train=50, n_test=20)
    datamodule = setup_data(make_config("data=mnist", "data.num_workers=0"))
    assert [len(datamodule.datasets[s]) for s in ("train", "val", "test")] == [45, 5, 20]
    images, labels, ids = next(iter(datamodule.test_dataloader()))
    assert images.shape[1:] == (1, 28, 28)
    assert np.array_equal(labels.numpy(), np.arange(len(labels)) % 10)
    assert ids.tolist() == list(range(len(labels)))  # each image says its position in the split


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_missing_downloadable_files_name_the_absolute_path_and_the_fix(make_config, tmp_path, monkeypatch, dataset):
    monkeypatch.chdir(tmp_path)
    cfg = make_config(f"data={dataset}", "data.num_workers=0", "paths.data_dir=data")  # relative, as shipped
    with pytest.raises(DataError, match=f"data directory {tmp_path / 'data'} does not exist.*data.download=true"):
        setup_data(cfg)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=f"not under {tmp_path / 'data'}: .*add data.download=true") as error:
        setup_data(cfg)
    assert "download=True" not in str(error.value)  # torchvision's Python-call advice, not our config's


def test_held_out_sets_are_stratified_by_class(make_config):
    datamodule = setup_data(make_config())
    dataset = datamodule.datasets["train"].dataset
    labels = np.array(dataset.targets)
    totals = np.bincount(labels, minlength=10)
    for split in ("val", "test"):
        counts = np.bincount(labels[list(indices(datamodule, split))], minlength=10)
        expected = totals * counts.sum() / totals.sum()
        assert np.all(np.abs(counts - expected) < 1), (split, counts, expected)


def test_stratified_hold_out_sizes_and_rest():
    targets = [0] * 50 + [1] * 30 + [2] * 3  # a small class is still represented
    (test, val), rest = stratified_hold_out(targets, len(targets), (20, 10), seed=0)
    assert (len(test), len(val), len(rest)) == (20, 10, 53)
    assert sorted(np.concatenate([test, val, rest]).tolist()) == list(range(83))
    assert np.bincount(np.array(targets)[test], minlength=3).tolist() == [12, 7, 1]
    again, _ = stratified_hold_out(targets, len(targets), (20, 10), seed=0)
    assert np.array_equal(again[0], test)
    (unlabelled, _), _ = stratified_hold_out(None, 83, (20, 10), seed=0)  # a dataset without targets
    assert len(unlabelled) == 20


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.batch_size=0", "data.batch_size must be a positive whole number, got 0"),
        ("data.num_workers=-1", "data.num_workers must be 0"),
        ("data.val_fraction=1.5", "data.val_fraction must be in"),
    ],
)
def test_bad_loader_values_are_refused_when_the_datamodule_is_built(make_config, override, message):
    with pytest.raises(DataError, match=message):
        instantiate(make_config(override).data, "data")


def test_machine_dependent_loader_defaults(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos")
    cfg = make_config("data=image_folder", f"data.root={root}")
    assert cfg.data.num_workers == usable_cpus()
    assert cfg.data.pin_memory == torch.cuda.is_available()


def test_missing_fraction_and_set_is_an_error(make_config):
    with pytest.raises(DataError, match="no test set"):
        setup_data(make_config("data.test_fraction=0.0"))


def served(loader) -> list[torch.Tensor]:
    return [images for images, _ in loader]


def test_a_resumed_training_loader_serves_the_rest_of_its_epoch_in_the_same_order(make_config):
    datamodule = setup_data(make_config("data.batch_size=100"))
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(3)
    whole = served(loader)
    stopped = iter(loader)
    for _ in range(4):
        next(stopped)
    position = loader.position()
    assert position == {"seed": loader.sampler.seed, "epoch": 3, "images": 400}

    again = setup_data(make_config("data.batch_size=100")).train_dataloader()
    again.seek(position)
    rest = served(again)
    assert len(rest) == len(whole) - 4 and all(torch.equal(a, b) for a, b in zip(rest, whole[4:], strict=True))
    assert again.position()["images"] == 100 * len(whole)  # the whole epoch, counting the part served before
    again.sampler.set_epoch(4)  # the next epoch: whole, and shuffled anew
    following = served(again)
    assert len(following) == len(whole) and not torch.equal(following[0], whole[0])


def test_each_training_image_is_served_once_per_epoch_across_ddp_processes(make_config):
    from image_classification.data.sampling import EpochSampler

    dataset = setup_data(make_config()).datasets["train"]
    shares = [list(EpochSampler(dataset, num_replicas=2, rank=rank, seed=5)) for rank in (0, 1)]
    indices = [index for share in shares for index, _ in share]
    assert len(shares[0]) == len(shares[1]) == (len(dataset) + 1) // 2
    assert set(indices) == set(range(len(dataset)))  # each image; one repeated to even the shares (odd size)
    assert len(indices) - len(set(indices)) == len(dataset) % 2


def test_an_augmented_image_is_the_same_whichever_worker_loads_it(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")  # what seed=7 sets: the training order
    root = write_image_folder(tmp_path / "photos")
    overrides = ["data=image_folder", f"data.root={root}", "data.image_size=32", "data.batch_size=5",
                 "data/auto_augment=randaugment", "data.persistent_workers=false"]  # fmt: skip
    by_workers = {}
    for workers in (0, 2):
        loader = setup_data(make_config(*overrides, f"data.num_workers={workers}")).train_dataloader()
        torch.manual_seed(workers)  # the global generator does not decide an image's augmentation
        by_workers[workers] = served(loader)
    assert all(torch.equal(a, b) for a, b in zip(by_workers[0], by_workers[2], strict=True))
    again = served(loader)  # the same epoch twice: the same augmentations
    assert all(torch.equal(a, b) for a, b in zip(again, by_workers[2], strict=True))
    loader.sampler.set_epoch(1)  # another epoch: other ones
    assert not torch.equal(served(loader)[0], by_workers[2][0])


def test_loading_an_image_in_the_main_process_leaves_the_global_generators_as_they_were(make_config, tmp_path):
    import random

    root = write_image_folder(tmp_path / "photos")
    datamodule = setup_data(make_config("data=image_folder", f"data.root={root}", "data.image_size=32",
                                        "data.num_workers=0"))  # fmt: skip
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    datamodule.datasets["train"][(4, 123)]
    assert (torch.rand(3), random.random(), np.random.rand())[1:] == expected[1:]
    torch.manual_seed(0)
    datamodule.datasets["train"][(4, 123)]
    assert torch.equal(torch.rand(3), expected[0])


def test_processes_started_together_download_one_at_a_time(tmp_path):
    # torchrun and SLURM start every process at once, before any process group exists
    import functools
    import itertools
    import multiprocessing

    from image_classification import DataModule
    from tests.helpers import SlowDownload

    factory = functools.partial(SlowDownload, root=str(tmp_path), download=True)
    datamodule = DataModule(factory, num_classes=2, root=str(tmp_path), download=True, test_fraction=0.25)
    processes = [multiprocessing.get_context("fork").Process(target=datamodule.prepare_data)
                 for _ in range(3)]  # fmt: skip
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    intervals = sorted(
        tuple(map(float, line.split()[1:])) for line in (tmp_path / "downloads.txt").read_text().splitlines()
    )
    assert len(intervals) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(intervals)), intervals
