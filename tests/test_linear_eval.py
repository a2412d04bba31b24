"""Linear evaluation: a frozen backbone that stays frozen, and a linear head that learns what its features hold."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import choices, photos, write_image_folder
from PIL import Image
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import to_pil_image

import trainer
from image_classification import compare, load_model, load_network
from image_classification.config import compose, instantiate
from image_classification.data import Digits
from image_classification.errors import UserError
from image_classification.evaluate import evaluate
from image_classification.evaluation import (
    FeatureCache,
    LogisticRegression,
    NearestNeighbours,
    clear_memory,
    logistic_regression,
)
from image_classification.evaluation.report import bootstrap_interval
from image_classification.networks import Backbone, JigsawCNN, KNNProbe, LinearProbe, OpenCLIPVisual
from image_classification.networks.weights import load_weights


def small_backbone_file(path) -> JigsawCNN:
    network = JigsawCNN(
        0, in_chans=1, channels=[8, 16], kernel_sizes=[3, 3], strides=[1, 1], pool_after=[0], pool_size=2
    )
    with torch.no_grad():  # batch-norm statistics of a trained network, not the defaults
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    torch.save(network.state_dict(), path)
    return network


@pytest.mark.parametrize("strategy", ["end_to_end", "cached"])
def test_the_backbone_gets_no_gradient_and_its_weights_and_statistics_do_not_change(make_config, tmp_path, strategy):
    saved = small_backbone_file(tmp_path / "backbone.pt")
    cfg = make_config(
        "experiment=linear-eval",
        f"strategy={strategy}",
        f"network.backbone.checkpoint={tmp_path / 'backbone.pt'}",
        "network.backbone.network.channels=[8,16]",
        "network.backbone.network.kernel_sizes=[3,3]",
        "network.backbone.network.strides=[1,1]",
        "network.backbone.network.pool_after=[0]",
        "debug=limit",
    )
    report = trainer.train(cfg)
    # 15 training steps later, the rebuilt probe's backbone holds the file's weights and running statistics
    probe = load_network(report["last_checkpoint"])
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(probe.backbone.network.state_dict()[name], value, msg=name)


def test_only_the_head_trains_and_the_backbone_stays_in_eval_mode():
    probe = LinearProbe(
        Backbone(JigsawCNN(0, in_chans=1, channels=[4], kernel_sizes=[3], strides=[1], pool_after=[])), 3
    )
    probe.train()
    assert not probe.backbone.network.training and probe.head.training
    probe(torch.randn(4, 1, 8, 8)).sum().backward()
    assert all(p.grad is None for p in probe.backbone.parameters())
    assert all(p.grad is not None for p in probe.head.parameters())


class OneHotLabels(nn.Module):
    """A backbone whose features are the one-hot labels written into the images' first pixel."""

    num_features, num_classes = 10, 0

    def __init__(self, num_features: int = 10):
        super().__init__()
        self.num_features = num_features

    def forward(self, images):
        return nn.functional.one_hot(images[:, 0, 0, 0].long(), 10).float()


@pytest.mark.parametrize("cached", [False, True])
def test_features_that_are_the_labels_score_100_percent(cached):
    torch.manual_seed(0)
    labels = torch.randint(10, (200,))
    images = torch.zeros(200, 1, 4, 4)
    images[:, 0, 0, 0] = labels.float()
    probe = LinearProbe(Backbone(OneHotLabels()), 10, normalize=True)
    inputs = probe.backbone(images) if cached else images  # cached: the features computed once
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(probe(inputs), labels).backward()
        optimizer.step()
    probe.eval()
    assert (probe(inputs).argmax(dim=1) == labels).all()


def test_a_backbone_must_be_built_as_a_feature_extractor():
    with pytest.raises(ValueError, match="build it with num_classes=0"):
        Backbone(JigsawCNN(10, channels=[4], kernel_sizes=[3], strides=[1], pool_after=[]))


@pytest.mark.parametrize("network", ["resnet18", "vit_ti16", "small_cnn"])
def test_any_network_config_is_a_backbone(make_config, network):
    cfg = make_config("experiment=linear-eval", f"network@network.backbone.network={network}", "debug=fdr")
    probe = instantiate(cfg.network, "network")
    assert probe.head[-1].in_features == probe.backbone.num_features
    report = trainer.train(cfg)
    assert 0.0 <= report["metrics"]["test/acc"] <= 1.0


SMALL_BACKBONE = (
    "network.backbone.network.channels=[8,16]",
    "network.backbone.network.kernel_sizes=[3,3]",
    "network.backbone.network.strides=[1,1]",
    "network.backbone.network.pool_after=[0]",
)
EVALUATE_QUIETLY = [
    "logger=none",
    "print_config=false",
    "++callbacks.rich_progress_bar=null",
    "++callbacks.rich_model_summary=null",
]
REPORT_FIELDS = {
    "benchmark", "dataset", "strategy", "score", "splits", "per_class", "backbone", "command", "overrides",
    "git_commit", "time", "hostname", "device", "versions", "tested_checkpoint", "examples",
}  # fmt: skip


@pytest.mark.parametrize("strategy", choices("strategy"))
def test_each_strategy_writes_a_full_report(make_config, tmp_path, strategy):
    clear_memory()
    overrides = ["experiment=linear-eval", f"strategy={strategy}", "trainer.max_epochs=2", *SMALL_BACKBONE]
    result = trainer.train(make_config(*overrides), overrides)
    metrics, fitted = result["metrics"], result["fit"]
    if strategy == "logistic":  # metrics.json says which L2 strength the search chose, among those it tried
        assert fitted["l2"] in [row["l2"] for row in fitted["search"]] and len(fitted["search"]) == 15
    else:
        assert fitted == ({"k": 20, "temperature": 0.07, "bank_size": 1294} if strategy == "knn" else None)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report) >= REPORT_FIELDS, REPORT_FIELDS - set(report)
    assert report["strategy"] == strategy and report["benchmark"] == "linear-eval"
    score = report["score"]
    assert score["top1"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert score["ci95"][0] <= score["top1"] <= score["ci95"][1] and score["ci95"][0] < score["ci95"][1]
    assert score["n"] == len(report["examples"]) == sum(c["n"] for c in report["per_class"].values()) == 359
    assert report["splits"]["test"]["acc"] == pytest.approx(metrics["test/acc"])
    assert report["splits"]["val"]["acc"] == pytest.approx(metrics["val/acc"])
    correct = [e["label"] == e["predicted"] for e in report["examples"]]
    assert sum(correct) / len(correct) == pytest.approx(score["top1"])
    assert len({e["id"] for e in report["examples"]}) == 359  # the test images, each once
    assert all(0 < e["score"] <= 1 for e in report["examples"])
    assert (
        report["backbone"]["name"] == "JigsawCNN (as initialized)" and len(report["backbone"]["weights_sha256"]) == 64
    )
    assert report["hostname"] and report["device"] and report["time"] and report["command"]
    assert report["overrides"] == overrides
    # the tested probe, rebuilt from its checkpoint alone, classifies the test images as the report says
    probe = load_network(report["tested_checkpoint"])
    datamodule = instantiate(make_config(*overrides).data, "data")
    datamodule.setup("fit")
    images = datamodule.images["test"]
    ids = [images.indices[i] for i in range(len(images))]
    assert [e["id"] for e in report["examples"]] == ids  # in loader order, by index into the digits
    batch = (
        torch.stack([images[i][0] for i in range(len(images))]),
        torch.tensor([images[i][1] for i in range(len(images))]),
    )
    with torch.no_grad():
        predicted = probe(datamodule.eval_batch_transform(*batch)[0]).argmax(1)
    assert [str(p) for p in predicted.tolist()] == [e["predicted"] for e in report["examples"]]
    # load_model preprocesses the raw images itself; evaluate tests the checkpoint on images through its backbone
    model = load_model(report["tested_checkpoint"])
    predicted = model.predict(Digits().images[ids]).argmax(1).tolist()
    assert [model.name(p) for p in predicted] == [e["predicted"] for e in report["examples"]]
    cfg = compose(
        [f"ckpt_path={report['tested_checkpoint']}", f"paths.output_dir={tmp_path / 'eval'}", *EVALUATE_QUIETLY],
        "evaluate",
    )
    evaluated = evaluate(cfg)["metrics"]
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], abs=1e-4)


def test_the_cached_features_are_the_backbones_features_of_the_evaluation_images(make_config):
    clear_memory()
    cfg = make_config("experiment=linear-eval", *SMALL_BACKBONE)
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    features, labels = datamodule.cached_features("test")
    images = datamodule.images["test"]
    batch = torch.stack([images[i][0] for i in range(8)]), torch.tensor([images[i][1] for i in range(8)])
    expected = datamodule.features.backbone(datamodule.eval_batch_transform(*batch)[0])
    torch.testing.assert_close(features[:8], expected)
    assert labels[:8].tolist() == batch[1].tolist()


class ImageDigits(torch.utils.data.Dataset):
    def __init__(self, n=40):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 1, 8, 8, generator=generator)
        self.targets = [i % 4 for i in range(n)]
        self.transform = None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def test_the_feature_cache_is_reused_when_nothing_changed_and_rebuilt_when_weights_or_transform_change(tmp_path):
    def cache(network, transform=None):
        clear_memory()  # what a new process sees: the disk cache only
        features = FeatureCache(Backbone(network), cache_dir=tmp_path, batch_size=16)
        features("train", ImageDigits(), transform)
        return features.computed

    network = JigsawCNN(0, in_chans=1, channels=[4], kernel_sizes=[3], strides=[1], pool_after=[])
    assert cache(network) == ["train"]
    assert cache(network) == [] and len(list(tmp_path.glob("*.pt"))) == 1  # read back
    with torch.no_grad():
        next(network.parameters()).add_(0.01)
    assert cache(network) == ["train"]  # other weights
    network.features[1].running_mean.add_(0.01)  # other batch-norm statistics
    assert cache(network) == ["train"]
    double = v2.Normalize(mean=[0.0], std=[0.5])
    assert cache(network, double) == ["train"]  # another transform
    assert cache(network, double) == []
    assert len(list(tmp_path.glob("*.pt"))) == 4
    clear_memory()
    memory = FeatureCache(Backbone(network), cache_dir=None)
    first = memory("train", ImageDigits())
    assert memory("train", ImageDigits()) is first and memory.computed == ["train"]  # kept in memory


def test_a_damaged_or_foreign_feature_cache_file_is_computed_again(tmp_path, caplog):
    """A cache file is read as data and checked against the split before use: one that does not load, or holds
    another count of features, another feature size, other labels or features that computed again for images
    drawn at random are not the same, is computed again, with a warning."""
    from image_classification.data import TransformedSubset

    network = JigsawCNN(0, in_chans=1, channels=[4], kernel_sizes=[3], strides=[1], pool_after=[])
    split = TransformedSubset(ImageDigits(), list(range(5, 37)), None)

    def cache():
        clear_memory()
        features = FeatureCache(Backbone(network), cache_dir=tmp_path, batch_size=16)
        return features("train", split), features.computed

    (good, labels), computed = cache()
    (file,) = tmp_path.glob("*.pt")
    whole = file.read_bytes()
    for damage, why in [
        (lambda: file.write_bytes(whole[: len(whole) // 2]), "cannot be read (RuntimeError)"),
        (lambda: torch.save({"features": good[:3], "labels": labels[:3]}, file), "holds (3, 36) features for 32"),
        (lambda: torch.save({"features": good[:, :2], "labels": labels}, file), "(32, 2) features for 32 images of 36"),
        (lambda: torch.save({"features": good, "labels": (labels + 1) % 4}, file), "labels that are not the split's"),
        (lambda: torch.save([good, labels], file), "cannot be read (TypeError)"),
        (  # forged: the right shape and labels, features that give them away
            lambda: torch.save({"features": 10 * nn.functional.one_hot(labels, 36).float(), "labels": labels}, file),
            "features that are not this backbone's of the train images (checked 8 at random)",
        ),
    ]:
        damage()
        caplog.clear()
        (features, read_labels), computed = cache()
        assert computed == ["train"] and torch.equal(features, good) and torch.equal(read_labels, labels), why
        assert why in caplog.text and "computing them again" in caplog.text
    assert cache()[1] == []  # the file written again is read back


def test_a_changed_backbone_checkpoint_changes_the_features_a_run_uses(make_config, tmp_path):
    clear_memory()
    small_backbone_file(tmp_path / "a.pt")
    runs = []
    for name in ("a", "a", "b"):
        if name == "b":
            small_backbone_file(tmp_path / "b.pt")
        cfg = make_config(
            "experiment=linear-eval", f"network.backbone.checkpoint={tmp_path / name}.pt", *SMALL_BACKBONE
        )
        datamodule = instantiate(cfg.data, "data")
        datamodule.setup("fit")
        runs.append((datamodule.features.computed, datamodule.cached_features("train")[0]))
    assert runs[0][0] == ["train", "val", "test"] and runs[1][0] == []  # the second run reuses the first's
    assert runs[2][0] == ["train", "val", "test"] and not torch.equal(runs[2][1], runs[0][1])


def one_hot_split(n, generator):
    labels = torch.randint(10, (n,), generator=generator)
    return nn.functional.one_hot(labels, 10).float(), labels


@pytest.mark.parametrize("normalize", [True, False])
def test_logistic_regression_on_features_that_are_the_labels_scores_100_percent(normalize):
    generator = torch.Generator().manual_seed(0)
    train, val, test = (one_hot_split(n, generator) for n in (200, 50, 50))
    probe = LinearProbe(Backbone(OneHotLabels()), 10, normalize=normalize)
    chosen = LogisticRegression(device="cpu")(probe, train, val)
    probe.eval()
    assert (probe(test[0]).argmax(1) == test[1]).all()
    assert len(chosen["search"]) >= 7 and chosen["l2"] in {row["l2"] for row in chosen["search"]}


def test_knn_on_features_that_are_the_labels_scores_100_percent(tmp_path):
    generator = torch.Generator().manual_seed(0)
    train, test = one_hot_split(200, generator), one_hot_split(50, generator)
    probe = KNNProbe(Backbone(OneHotLabels()), 10, k=20)
    NearestNeighbours()(probe, train, test)
    assert (probe(test[0]).argmax(1) == test[1]).all()
    log_probabilities = probe(test[0])
    torch.testing.assert_close(log_probabilities.exp().sum(1), torch.ones(50))
    # a probe built afresh takes a checkpoint's bank, whatever its size
    rebuilt = KNNProbe(Backbone(OneHotLabels()), 10, k=20)
    rebuilt.load_state_dict(probe.state_dict())
    torch.testing.assert_close(rebuilt(test[0]), log_probabilities)


def test_knn_votes_by_similarity_weighted_neighbours():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    probe = KNNProbe(Backbone(OneHotLabels()), 2, k=2, temperature=0.1).fit(bank, torch.tensor([0, 1, 1]))
    similarity = (
        nn.functional.normalize(bank, dim=1)[:2] @ nn.functional.normalize(torch.tensor([[1.0, 0.05]]), dim=1).T
    )
    weights = (similarity.squeeze(1) / 0.1).exp()
    expected = (weights / weights.sum()).log()
    torch.testing.assert_close(probe(torch.tensor([[1.0, 0.05]]))[0], expected)


def test_logistic_regression_matches_scikit_learn():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression as ScikitLogisticRegression

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    l2 = 1e-2
    weight, bias = logistic_regression(torch.tensor(x), torch.tensor(y), 10, l2)
    reference = ScikitLogisticRegression(C=1 / (l2 * len(x)), max_iter=5000, tol=1e-8).fit(x, y)
    ours = torch.softmax(torch.tensor(x) @ weight.T + bias, dim=1).numpy()
    np.testing.assert_allclose(ours, reference.predict_proba(x), atol=2e-3)
    assert (ours.argmax(1) == reference.predict(x)).all()


def test_the_search_standardizes_the_features_the_same_way_with_or_without_the_probes_batch_norm():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 3

    def split(n):
        labels = torch.randint(4, (n,), generator=generator)
        return centres[labels] * 5 + 10 + torch.randn(n, 16, generator=generator) * 4, labels

    train, val, test = split(300), split(100), split(100)
    outputs = []
    for normalize in (True, False):
        probe = LinearProbe(Backbone(OneHotLabels(16)), 4, normalize=normalize)
        LogisticRegression(start_exponents=(-4, -2, 0), steps_per_decade=2, device="cpu")(probe, train, val)
        outputs.append(probe.eval()(test[0]))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-3, rtol=1e-3)


def test_the_bootstrap_interval_holds_the_accuracy_and_narrows_with_more_images():
    small, large = bootstrap_interval([True, False] * 50), bootstrap_interval([True, False] * 5000)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5


def test_compare_prints_one_row_per_report(make_config, tmp_path, capsys):
    clear_memory()
    for strategy in ("logistic", "knn"):
        trainer.train(
            make_config(
                "experiment=linear-eval",
                f"strategy={strategy}",
                f"paths.output_dir={tmp_path / strategy}",
                *SMALL_BACKBONE,
            )
        )
    capsys.readouterr()
    assert compare.main([str(tmp_path), "--sort"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["benchmark", "strategy", "backbone"]
    rows = [
        re.match(r"linear-eval +(\w+) +JigsawCNN \(as initialized\) +([\d.]+) ", line).groups() for line in lines[2:]
    ]
    assert {r[0] for r in rows} == {"logistic", "knn"} and float(rows[0][1]) >= float(rows[1][1])
    assert compare.main([str(tmp_path / "missing")]) == 1


# --- one interface for a backbone, whatever its source -------------------------------------------------


@pytest.mark.parametrize(
    "choice, size, extra, patches",
    [
        ("jigsaw_cnn_small", 32, [], 8 * 8),  # one max-pool: 16x16 ... a feature map of the last conv
        ("resnet18", 64, [], 2 * 2),
        ("vit_ti16", 32, [], 2 * 2),  # the class token left out
        ("swin_t_w4", 64, [], 2 * 2),  # timm's Swin gives its map channels last
        (
            "open_clip",
            64,
            ["network.backbone.network.model_name=ViT-S-32", "network.backbone.network.image_size=64"],
            2 * 2,
        ),
    ],
)
def test_a_backbone_gives_image_and_patch_features(make_config, choice, size, extra, patches):
    channels = 3 if choice == "open_clip" else 1
    cfg = make_config(
        "experiment=linear-eval",
        f"network@network.backbone.network={choice}",
        f"data.image_size={size}",
        f"data.channels={channels}",
        *extra,
    )
    backbone = instantiate(cfg.network, "network").backbone
    images = torch.randn(2, channels, size, size)
    assert backbone(images).shape == (2, backbone.num_features)
    tokens = backbone.patch_features(images)
    assert tokens.shape[:2] == (2, patches) and tokens.ndim == 3
    if choice == "jigsaw_cnn_small":  # its image features: the map pooled to 2x2
        assert tokens.shape[2] * 4 == backbone.num_features


def test_timm_and_open_clip_backbones_give_their_own_preprocessing(tmp_path):
    import timm

    timm_backbone = Backbone(timm.create_model("resnet18", num_classes=0))
    open_clip_backbone = Backbone(OpenCLIPVisual("ViT-S-32", image_size=64))
    photo = Image.fromarray(photos()["cat"])
    for backbone, size, mean in ((timm_backbone, 224, 0.485), (open_clip_backbone, 64, 0.48145466)):
        transform = backbone.eval_transform()
        image = transform(photo)
        assert image.shape == (3, size, size) and image.dtype == torch.float32
        assert f"{mean}" in repr(transform)
    assert Backbone(JigsawCNN(0, channels=[4], kernel_sizes=[3], strides=[1], pool_after=[])).eval_transform() is None


def test_open_clip_weights_from_a_local_file_and_a_linear_evaluation_with_its_preprocessing(make_config, tmp_path):
    import open_clip

    clear_memory()
    model = open_clip.create_model("ViT-S-32", force_image_size=64)
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    loaded = OpenCLIPVisual("ViT-S-32", pretrained=str(tmp_path / "clip.pt"), image_size=64)
    for name, value in model.visual.state_dict().items():
        torch.testing.assert_close(loaded.visual.state_dict()[name], value, msg=name)

    root = write_image_folder(tmp_path / "photos")
    overrides = [
        "experiment=linear-eval",
        "data=image_folder",
        f"data.root={root}",
        "data.num_workers=0",
        "data.image_size=64",
        "network@network.backbone.network=open_clip",
        "network.backbone.network.model_name=ViT-S-32",
        f"network.backbone.network.pretrained={tmp_path / 'clip.pt'}",
        "network.backbone.network.image_size=64",
        "data.features.transform=backbone",
        "strategy=logistic",
    ]
    cfg = make_config(*overrides)
    report = trainer.train(cfg, overrides)
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")  # the same features again: open_clip's preprocessing of the photos, not the data's
    photo, _ = datamodule.images["test"].dataset[datamodule.images["test"].indices[0]]
    expected = loaded.eval()(loaded.preprocess(to_pil_image(photo))[None])  # open_clip's takes PIL images
    torch.testing.assert_close(datamodule.cached_features("test")[0][:1], expected, atol=1e-4, rtol=1e-4)
    assert 0 <= report["metrics"]["test/acc"] <= 1
    rebuilt = load_network(report["tested_checkpoint"])  # the probe, rebuilt without downloading anything
    assert isinstance(rebuilt.backbone.network, OpenCLIPVisual)


def test_checkpoints_keep_the_frozen_backbone_once_beside_them(make_config, tmp_path):
    clear_memory()
    saved = small_backbone_file(tmp_path / "backbone.pt")
    overrides = ["experiment=linear-eval", f"network.backbone.checkpoint={tmp_path / 'backbone.pt'}", *SMALL_BACKBONE]
    report = trainer.train(make_config(*overrides, "trainer.max_epochs=3"))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert len(list(checkpoints.glob("backbone-*.pt"))) == 1  # written once for the run's 3 epochs
    for path in checkpoints.glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert not any(k.startswith("network.backbone.") for k in state) and "network.head.1.weight" in state
    probe = load_network(report["tested_checkpoint"])
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(probe.backbone.network.state_dict()[name], value, msg=name)
    # resumed for more epochs: the module takes the backbone back from its own, built from the same file
    resumed = trainer.train(make_config(*overrides, "trainer.max_epochs=5", "ckpt_path=last"))
    assert torch.load(resumed["last_checkpoint"], weights_only=True)["epoch"] == 4
    # the backbone's file changed since: resuming says so
    small_backbone_file(tmp_path / "backbone.pt")
    with pytest.raises(UserError, match="not this run's backbone"):
        trainer.train(make_config(*overrides, "trainer.max_epochs=6", "ckpt_path=last"))
    # a checkpoint copied without its backbone file
    (tmp_path / "alone").mkdir()
    alone = tmp_path / "alone" / "last.ckpt"
    alone.write_bytes((checkpoints / "last.ckpt").read_bytes())
    with pytest.raises(UserError, match="which is not beside it"):
        load_network(alone)


def test_a_backbones_own_preprocessing_takes_grey_images_as_rgb_and_says_what_it_needs(make_config, tmp_path):
    """data.features.transform=backbone on the grey digits: the backbone's preprocessing gets RGB images; a
    backbone built for one channel, or one with no preprocessing of its own, is one line before anything runs."""
    from image_classification.evaluation.features import OnPILImages

    timm_transform = Backbone(networks_timm("test_resnet", in_chans=3)).eval_transform()
    grey = Digits()[0][0]
    assert OnPILImages(timm_transform)(grey).shape[0] == 3
    base = ["experiment=linear-eval", "data.features.transform=backbone", "logger=none"]
    for extra, message in [
        ([], "JigsawCNN has no preprocessing of its own; use data.features.transform=data"),
        (["network@network.backbone.network=timm", "network.backbone.network.model_name=test_resnet"],
         "it takes 1 channels: build it for 3 (network.backbone.network.in_chans=3)"),
    ]:  # fmt: skip
        with pytest.raises(UserError, match=re.escape(message)):
            trainer.train(make_config(*base, *extra))


def networks_timm(name, **kwargs):
    from image_classification.networks import timm_network

    return timm_network(name, num_classes=0, **kwargs)


def test_a_backbone_file_that_does_not_fit_stops_the_run_before_anything_is_written(make_config, tmp_path):
    # an 8-16 channel trunk given to the 32-64-128 default: every layer has other shapes
    small_backbone_file(tmp_path / "narrow.pt")
    cfg = make_config("experiment=linear-eval", f"network.backbone.checkpoint={tmp_path / 'narrow.pt'}")
    message = r"network.backbone.checkpoint: \S+narrow.pt does not fit JigsawCNN: features.0.weight is \[8, 1, 3, 3\]"
    with pytest.raises(UserError, match=message):
        trainer.train(cfg)
    assert not (tmp_path / "run").exists()
    cfg = make_config("experiment=linear-eval", f"network.backbone.checkpoint={tmp_path / 'missing.pt'}")
    with pytest.raises(UserError, match=r"^network.backbone.checkpoint: \S+missing.pt does not exist"):
        trainer.train(cfg)


def small_classifier(num_classes: int, in_chans: int = 1) -> JigsawCNN:
    return JigsawCNN(
        num_classes, in_chans=in_chans, channels=[8, 16], kernel_sizes=[3, 3], strides=[1, 1], pool_after=[0]
    )


def test_a_weights_file_loads_whole_and_only_a_classifier_head_may_be_left_out(tmp_path, caplog):
    supervised = small_classifier(10)
    torch.save(supervised.state_dict(), tmp_path / "supervised.pt")
    trunk = {k: v for k, v in supervised.state_dict().items() if not k.startswith("head.")}

    # a backbone takes every tensor but the file's head
    backbone = Backbone(small_classifier(0), checkpoint=tmp_path / "supervised.pt")
    assert all(torch.equal(backbone.network.state_dict()[k], v) for k, v in trunk.items())

    # a classifier for 5 classes: the trunk, and a new head, said once as the head
    with caplog.at_level("WARNING"):
        five = load_weights(small_classifier(5), tmp_path / "supervised.pt")
    assert all(torch.equal(five.state_dict()[k], v) for k, v in trunk.items())
    assert caplog.text.count("the classifier head (head.1.bias, head.1.weight) is not loaded") == 1

    # a file without one tensor of the trunk: refused, naming it, whatever else would load
    partial = dict(supervised.state_dict())
    del partial["features.1.running_mean"]
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(UserError, match=r"partial.pt does not fit JigsawCNN: features.1.running_mean is not in"):
        load_weights(small_classifier(10), tmp_path / "partial.pt")

    # RGB weights for grey images: the first convolution's channels summed, as timm adapts pretrained weights
    rgb = small_classifier(10, in_chans=3)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    grey = load_weights(small_classifier(10), tmp_path / "rgb.pt")
    assert torch.allclose(grey.features[0].weight, rgb.features[0].weight.sum(1, keepdim=True))


def test_grey_images_reach_an_rgb_backbone_as_rgb(make_config):
    # open_clip's image tower on the digits: "expected input to have 3 channels, but got 1"
    clip = OpenCLIPVisual("ViT-S-32", image_size=32)
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(clip(grey), clip(grey.expand(-1, 3, -1, -1)))
    backbone = Backbone(networks_timm("test_resnet", in_chans=3))
    torch.testing.assert_close(backbone(grey), backbone(grey.expand(-1, 3, -1, -1)))
    assert backbone.patch_features(grey).shape[0] == 2
    cfg = make_config("experiment=linear-eval", "network@network.backbone.network=open_clip",
                      "network.backbone.network.model_name=ViT-S-32", "network.backbone.network.image_size=32",
                      "debug=fdr", "data.features.batch_size=512")  # fmt: skip
    assert 0 <= trainer.train(cfg)["metrics"]["test/acc"] <= 1


def test_computing_features_leaves_the_backbone_where_it_was(tmp_path):
    # on a GPU the cache moved the backbone there and left it, while the probe sharing it ran on the CPU
    backbone = Backbone(small_classifier(0))
    moves = []
    original = backbone.to

    def to(*args, **kwargs):
        moves.append(str(args[0]))
        return original(*args, **kwargs)

    backbone.to = to
    cache = FeatureCache(backbone, device="cpu")
    cache.compute("train", torch.utils.data.TensorDataset(torch.rand(4, 1, 8, 8), torch.zeros(4)), None, quiet=True)
    assert moves == ["cpu", "cpu"]  # to the cache's device, then back where it was
