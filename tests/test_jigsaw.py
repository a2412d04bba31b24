"""Jigsaw pretraining: permutation sets, the puzzle transform, the networks, and what a run leaves behind."""

import itertools

import numpy as np
import pytest
import torch
from conftest import compose_config, photos, write_image_folder
from PIL import Image

import trainer
from image_classification import load_network
from image_classification.checkpoint import METADATA_KEY
from image_classification.config import instantiate, run_config_policy
from image_classification.data import Digits
from image_classification.data import permutations as permutation_module
from image_classification.data.jigsaw import Jigsaw, reassemble
from image_classification.data.permutations import hamming_distances, permutation_set, select_permutations
from image_classification.errors import DataError
from image_classification.networks import JigsawCNN, JigsawNetwork, timm_network


def off_diagonal(distances: np.ndarray) -> np.ndarray:
    return distances[~np.eye(len(distances), dtype=bool)]


# (tiles, size, method): the smallest pairwise Hamming distance each set has, as the docstring documents.
DOCUMENTED_MINIMUM = [(9, 100, "max", 6), (9, 100, "max_avg", 4), (9, 1000, "max", 5), (4, 24, "max", 2)]


@pytest.mark.parametrize("n, size, method, minimum", DOCUMENTED_MINIMUM)
def test_permutation_sets_are_unique_permutations_far_apart(n, size, method, minimum):
    chosen = select_permutations(n, size, method, seed=0)
    assert chosen.shape == (size, n)
    assert all(sorted(p) == list(range(n)) for p in chosen.tolist())
    assert len(np.unique(chosen, axis=0)) == size
    assert off_diagonal(hamming_distances(chosen)).min() == minimum


def test_max_keeps_the_nearest_pair_farther_apart_than_random_and_max_avg():
    chosen = {m: off_diagonal(hamming_distances(select_permutations(9, 100, m, seed=3))) for m in ("max", "max_avg")}
    rng = np.random.default_rng(0)
    random = off_diagonal(hamming_distances(np.stack([rng.permutation(9) for _ in range(100)])))
    assert chosen["max"].min() > chosen["max_avg"].min() > random.min()
    assert chosen["max_avg"].mean() > random.mean()


def test_the_same_seed_gives_the_same_set_and_another_seed_another():
    a, b, c = (select_permutations(9, 30, "max", seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_larger_grids_choose_among_random_candidates():
    chosen = select_permutations(16, 20, "max", seed=0, candidates=5000)
    assert len(np.unique(chosen, axis=0)) == 20
    assert off_diagonal(hamming_distances(chosen)).min() >= 12


def test_impossible_sets_are_refused_in_one_line():
    with pytest.raises(DataError, match="4 tiles have 24 permutations to choose from, so 25 cannot"):
        select_permutations(4, 25)
    with pytest.raises(DataError, match="method must be one of max, max_avg"):
        select_permutations(9, 10, "min")
    with pytest.raises(DataError, match="n_tiles must be 2 or more"):
        permutation_set(1, 1)


def test_a_cached_set_is_read_back_instead_of_chosen_again(tmp_path, monkeypatch):
    first = permutation_set(3, 50, "max", seed=1, cache_dir=tmp_path)
    assert list(tmp_path.glob("permutations_9tiles_50_max_seed1.npy"))

    def chosen_again(*args, **kwargs):
        raise AssertionError("the cached set was not used")

    monkeypatch.setattr(permutation_module, "select_permutations", chosen_again)
    torch.testing.assert_close(permutation_set(3, 50, "max", seed=1, cache_dir=tmp_path), first)


def photo_batch(size: int, count: int = 4) -> torch.Tensor:
    """``count`` real photographs' top-left corners as a uint8 batch."""
    images = [torch.from_numpy(p[:size, :size]).permute(2, 0, 1) for p in photos().values()]
    return torch.stack(list(itertools.islice(itertools.cycle(images), count)))


def test_reassembling_with_the_inverse_permutation_gives_back_the_crop_exactly():
    images = photo_batch(96)
    jigsaw = Jigsaw(n_tiles=3, tile_size=32, permutations=100, normalize=False)  # no gap, no jitter
    puzzles, index = jigsaw(images, torch.zeros(4, dtype=torch.long))
    assert puzzles.shape == (4, 9, 3, 32, 32) and puzzles.dtype == torch.float32
    for puzzle, i, image in zip(puzzles, index, images, strict=True):
        assert not torch.equal(reassemble(puzzle, torch.arange(9)), image.float() / 255)  # shuffled
        torch.testing.assert_close(reassemble(puzzle, jigsaw.permutations[i]), image.float() / 255, rtol=0, atol=0)


@pytest.mark.parametrize("n_tiles", [2, 3, 4])
def test_each_tile_is_a_crop_inside_its_own_cell(n_tiles):
    images = photo_batch(24 * n_tiles).float() / 255
    tile = 18
    jigsaw = Jigsaw(n_tiles=n_tiles, tile_size=tile, permutations=10, normalize=False, channel_jitter=0)
    puzzles, index = jigsaw(images, torch.zeros(4, dtype=torch.long))
    offsets = set()
    for puzzle, i, image in zip(puzzles, index, images, strict=True):
        for position, source in enumerate(jigsaw.permutations[i].tolist()):
            row, col = divmod(source, n_tiles)
            cell = image[:, 24 * row : 24 * row + 24, 24 * col : 24 * col + 24]
            found = [
                (y, x)
                for y in range(24 - tile + 1)
                for x in range(24 - tile + 1)
                if torch.equal(cell[:, y : y + tile, x : x + tile], puzzle[position])
            ]
            assert found, (position, source)
            offsets.add(found[0])
    assert len(offsets) > 3  # the position inside the cell is random


def test_evaluation_puzzles_are_centred_and_fixed_per_image():
    images = photo_batch(96)
    jigsaw = Jigsaw(n_tiles=3, tile_size=24, permutations=100, normalize=False).eval()
    labels = torch.tensor([0, 1, 2, 1000])
    first, index = jigsaw(images, labels)
    again, same = jigsaw(images, labels)
    torch.testing.assert_close(first, again)
    assert index.tolist() == same.tolist() and len(set(index.tolist())) > 1
    top_left = reassemble(first[0], jigsaw.permutations[index[0]])[:, :24, :24]
    torch.testing.assert_close(top_left, images[0, :, 4:28, 4:28].float() / 255)
    spread = jigsaw(images.repeat(25, 1, 1, 1), torch.arange(100))[1]
    assert len(set(spread.tolist())) > 50  # consecutive images get permutations all over the set


def test_tiles_are_normalized_each_and_grey_puzzles_have_equal_channels():
    images = photo_batch(96)
    jigsaw = Jigsaw(n_tiles=3, tile_size=28, grayscale=1.0, channel_jitter=0)
    puzzles, _ = jigsaw(images, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(puzzles.mean(dim=(-2, -1)), torch.zeros(4, 9, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(puzzles.std(dim=(-2, -1)), torch.ones(4, 9, 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(puzzles[:, :, 0], puzzles[:, :, 2])


def test_channel_jitter_shifts_colour_channels_apart():
    images = photo_batch(96).float() / 255
    jigsaw = Jigsaw(n_tiles=3, tile_size=24, normalize=False, channel_jitter=2)
    torch.manual_seed(0)
    puzzles, index = jigsaw(images, torch.zeros(4, dtype=torch.long))
    apart = 0
    for puzzle, i, image in zip(puzzles, index, images, strict=True):
        for t, tile in enumerate(puzzle[torch.argsort(jigsaw.permutations[i])]):
            row, col = divmod(t, 3)
            corners = []  # where each channel was cut: within 2 px of a position inside the cell
            for c in range(3):
                candidates = [
                    (y, x)
                    for y in range(max(0, 32 * row - 2), min(72, 32 * row + 10) + 1)
                    for x in range(max(0, 32 * col - 2), min(72, 32 * col + 10) + 1)
                ]
                corners.append(
                    next(
                        yx
                        for yx in candidates
                        if torch.equal(image[c, yx[0] : yx[0] + 24, yx[1] : yx[1] + 24], tile[c])
                    )
                )
            spread = np.ptp(np.array(corners), axis=0)
            assert spread.max() <= 4
            apart += spread.max() > 0
    assert apart > 20, apart


def test_a_cell_smaller_than_the_tile_is_refused_with_the_fix():
    with pytest.raises(DataError, match="raise data.crop_size to at least 192 or lower data.image_size"):
        Jigsaw(n_tiles=3, tile_size=64)(torch.zeros(2, 3, 96, 96), torch.zeros(2, dtype=torch.long))


TRUNKS = {
    "jigsaw_cnn": lambda: JigsawCNN(
        0, channels=[8, 16, 32], kernel_sizes=[3, 3, 3], strides=[1, 1, 1], pool_after=[0, 1]
    ),
    "resnet18": lambda: timm_network("resnet18", num_classes=0),
    "vit": lambda: timm_network("vit_tiny_patch16_224", num_classes=0, img_size=32, depth=2),
    "swin": lambda: timm_network("swin_tiny_patch4_window7_224", num_classes=0, img_size=32, window_size=4),
}


@pytest.mark.parametrize("trunk", TRUNKS)
def test_the_context_free_network_shares_one_trunk_across_tiles(trunk):
    network = JigsawNetwork(TRUNKS[trunk](), num_classes=7, n_tiles=2, fc=[16, 32])
    puzzles = torch.randn(3, 4, 3, 32, 32, requires_grad=False)
    logits = network(puzzles)
    assert logits.shape == (3, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in network.parameters() if p.requires_grad)
    # The trunk sees each tile on its own: changing one tile changes that tile's features only.
    network.eval()
    with torch.no_grad():
        features = network.trunk(puzzles.flatten(0, 1))
        changed = puzzles.clone()
        changed[0, 1] = torch.randn(3, 32, 32)
        after = network.trunk(changed.flatten(0, 1))
    differs = (features - after).abs().amax(dim=1) > 1e-6
    assert differs.tolist() == [i == 1 for i in range(12)]


def test_a_trunk_with_a_head_is_refused():
    with pytest.raises(ValueError, match="build it with num_classes=0"):
        JigsawNetwork(timm_network("resnet18", num_classes=10), num_classes=5)
    with pytest.raises(ValueError, match="takes B x 9 x C x H x W puzzles"):
        JigsawNetwork(TRUNKS["jigsaw_cnn"](), num_classes=5)(torch.randn(2, 3, 32, 32))


# A short pretraining run of the embedded default: 10 epochs of 20 batches.
SHORT = ["experiment=jigsaw", "trainer.max_epochs=10"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One short jigsaw pretraining run, shared by the tests that read what it leaves behind."""
    tmp_path = tmp_path_factory.mktemp("jigsaw")
    with run_config_policy():
        report = trainer.train(compose_config(tmp_path, *SHORT))
    return report, tmp_path / "run"


def test_a_short_pretraining_run_solves_puzzles_of_held_out_images(pretrained):
    report, _ = pretrained
    assert report["metrics"]["test/acc"] > 0.2, report["metrics"]  # chance: 0.01
    assert not any(k.startswith("test/acc_class/") for k in report["metrics"])  # permutations are no categories


def test_nothing_but_the_image_tells_where_a_tile_was(make_config, monkeypatch):
    """On noise images the puzzles are unsolvable, unless the pipeline leaks positions (padding, or a resize
    whose resampling pattern differs from cell to cell: each of those reached 99% here)."""
    real = Digits.__init__

    def noise(self):
        real(self)
        self.images = torch.randint(
            0, 256, self.images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )

    monkeypatch.setattr(Digits, "__init__", noise)
    report = trainer.train(make_config(*SHORT))
    assert report["metrics"]["test/acc"] < 0.05, report["metrics"]


def test_the_feature_extractor_gives_the_trained_trunks_features(pretrained, make_config, caplog):
    report, run = pretrained
    path = run / "checkpoints" / "feature_extractor.pt"
    saved = torch.load(path, weights_only=True)
    assert saved[METADATA_KEY]["feature_extractor_of"] == report["tested_checkpoint"]
    trained = load_network(report["tested_checkpoint"])
    tiles = torch.randn(5, 1, 6, 6)
    features = trained.trunk(tiles)
    torch.testing.assert_close(load_network(path)(tiles), features)
    # As a backbone of another experiment: a classifier on the digits, started from the trunk.
    cfg = make_config("network=jigsaw_cnn_small", f"network.checkpoint={path}")
    with caplog.at_level("WARNING"):
        classifier = instantiate(cfg.network, "network").eval()
    assert "head.1.weight" in caplog.text  # the new head is named as missing
    torch.testing.assert_close(classifier.features(tiles), features)


def test_the_permutation_set_travels_in_the_checkpoint(pretrained, make_config, tmp_path, caplog):
    report, run = pretrained
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)["DataModule"]
    cache = next((run.parent / "data" / "permutations").glob("*.npy"))
    original = torch.from_numpy(np.load(cache))
    torch.testing.assert_close(saved["train_batch_transform.0"]["permutations"], original)
    torch.testing.assert_close(saved["eval_batch_transform.0"]["permutations"], original)
    # The cached set changes (another version of the selection, a lost cache): a resumed run keeps the
    # checkpoint's set, and says so.
    np.save(cache, np.ascontiguousarray(original.numpy()[:, ::-1]))
    cfg = make_config(*SHORT, "trainer.max_epochs=11", f"ckpt_path={last}", f"paths.data_dir={run.parent / 'data'}")
    with caplog.at_level("WARNING"):
        resumed = trainer.train(cfg)
    assert "the checkpoint's state differs from what the config builds; using the checkpoint's" in caplog.text
    kept = torch.load(resumed["last_checkpoint"], weights_only=True)["DataModule"]
    torch.testing.assert_close(kept["train_batch_transform.0"]["permutations"], original)
    assert resumed["metrics"]["test/acc"] > 0.2  # the network still solves the puzzles it learnt


def test_tensorboard_shows_puzzles_as_fed_and_as_solved(pretrained):
    _, run = pretrained
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # the folder: fitting and testing each write an event file there
    folder = next((run / "tensorboard").rglob("events.out.tfevents.*")).parent
    events = EventAccumulator(str(folder), {"images": 0})
    events.Reload()
    images = events.Images("val/puzzles")
    assert len(images) == 10  # one per validation
    assert images[-1].height > images[-1].width / 3  # four puzzles, one per row


TRUNK_SIZES = {  # trunk choice: (tile, puzzle) sizes at which it runs on a CPU in seconds
    "jigsaw_cnn": (16, 48),
    "jigsaw_cnn_small": (6, 24),
    "resnet18": (16, 48),
    "resnet50": (16, 48),
    "vit_ti16": (16, 48),
    "vit_s16": (16, 48),
    "swin_t_w4": (32, 96),
}


@pytest.mark.parametrize("trunk", TRUNK_SIZES)
def test_every_trunk_pretrains(make_config, trunk):
    tile, puzzle = TRUNK_SIZES[trunk]
    cfg = make_config(
        "experiment=jigsaw",
        f"network@network.trunk={trunk}",
        f"data.image_size={tile}",
        f"data.crop_size={puzzle}",
        "data.batch_size=4",
        "debug=fdr",
    )
    report = trainer.train(cfg)
    assert 0.0 <= report["metrics"]["test/acc"] <= 1.0


def test_a_folder_of_unlabeled_images_in_any_layout_splits_70_15_15(make_config, tmp_path):
    root = write_image_folder(tmp_path / "photos")  # train/val/test class folders: all of it is unlabeled
    (root / ".hidden").mkdir()
    Image.new("RGB", (48, 48)).save(root / ".hidden" / "skipped.png")
    cfg = make_config("data=jigsaw_folder", f"data.root={root}", "data.num_workers=0")
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    sizes = {split: len(datamodule.datasets[split]) for split in ("train", "val", "test")}
    assert sizes == {"train": 38, "val": 8, "test": 8}  # 54 images
    assert datamodule.datasets["train"][0][0].shape == (3, 255, 255)


def test_a_timm_trunk_becomes_a_backbone_of_another_experiment(make_config, tmp_path):
    cfg = make_config(
        "experiment=jigsaw",
        "network@network.trunk=resnet18",
        "data.image_size=16",
        "data.crop_size=48",
        "debug=limit",
    )
    report = trainer.train(cfg)
    extractor = tmp_path / "run" / "checkpoints" / "feature_extractor.pt"
    tiles = torch.randn(3, 1, 16, 16)
    features = load_network(report["tested_checkpoint"]).trunk(tiles)
    backbone = make_config("network=resnet18", f"network.checkpoint={extractor}")
    classifier = instantiate(backbone.network, "network").eval()
    torch.testing.assert_close(classifier.forward_head(classifier.forward_features(tiles), pre_logits=True), features)
