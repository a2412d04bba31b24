"""What the recipes are made of: the learning rate drawn ahead of a run, its scaling with the batch, mixing."""

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf

import trainer
from image_classification.config import instantiate
from image_classification.losses import FocalLoss
from image_classification.plot_lr import learning_rates, steps_per_epoch
from image_classification.plot_lr import main as plot_main
from tests.helpers import read_lines

QUICK = ["trainer.limit_train_batches=5", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "logger=none"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["scheduler=one_cycle"],
        ["scheduler.frequency=2"],
        ["trainer.accumulate_grad_batches=2"],
        ["scheduler=step", "scheduler.scheduler.step_size=1"],
    ],
    ids=["warmup_cosine", "one_cycle", "frequency", "accumulation", "step"],
)
def test_plotted_learning_rates_are_the_ones_training_uses(make_config, tmp_path, overrides):
    log = tmp_path / "steps.jsonl"
    recorder = ["+callbacks.steps._target_=tests.helpers.StepLog", f"+callbacks.steps.path={log}"]
    cfg = make_config("trainer.max_epochs=3", *QUICK, *overrides, *recorder)
    trainer.train(cfg)
    used = [r["lr"] for r in read_lines(log)]
    if "trainer.accumulate_grad_batches=2" in overrides:  # logged per batch; an optimizer step per 2 (and the last)
        used = used[1::2] if len(used) % 2 == 0 else [used[i] for i in range(len(used)) if i % 5 in (1, 3, 4)]
    drawn = learning_rates(cfg, steps_per_epoch(cfg))
    assert steps_per_epoch(cfg) == 5
    assert drawn == pytest.approx(used, rel=1e-9, abs=1e-15)


def test_plot_lr_writes_a_png_and_tensorboard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rates = plot_main(["trainer.max_epochs=4", "--out", "lr.png"])
    assert len(rates) == 4 * 21 and max(rates) == pytest.approx(3e-3)
    assert (tmp_path / "lr.png").stat().st_size > 10_000
    assert list((tmp_path / "tensorboard" / "lr").glob("events.out.tfevents.*"))


def test_plot_lr_draws_a_recipe_without_its_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = ["experiment=imagenet-vit", "data.num_classes=1000", "trainer.devices=8", "data.image_size=32"]
    rates = plot_main([*overrides, "--steps-per-epoch", "10", "--out", "vit.png"])
    assert len(rates) == 300 * 10
    assert max(rates) == pytest.approx(1e-3)  # 5e-4 x (128 x 8) / 512
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-5, rel=0.01)


@pytest.mark.parametrize(
    "trainer_overrides, lr",
    [([], 0.0625), (["trainer.devices=8"], 0.5), (["trainer.devices=[0,1]", "trainer.accumulate_grad_batches=4"], 0.5)],
)
def test_the_learning_rate_scales_with_the_effective_batch(make_config, tmp_path, trainer_overrides, lr):
    cfg = make_config(
        "experiment=imagenet-resnet50", "data.root=/nowhere", "trainer.accelerator=gpu", *trainer_overrides
    )
    assert OmegaConf.select(cfg, "optimizer.lr") == pytest.approx(lr)  # 0.5 at 1024 images a step


def test_mixup_and_cutmix_targets_are_probabilities_the_losses_take(make_config):
    cfg = make_config("data/mix=mixup_cutmix", "data.image_size=32")
    datamodule = instantiate(cfg.data, "data")
    datamodule.setup("fit")
    datamodule.trainer = type("Training", (), {"training": True})()
    torch.manual_seed(0)
    images, labels = next(iter(datamodule.train_dataloader()))
    mixed, targets = datamodule.on_after_batch_transfer((images, labels), 0)
    assert mixed.shape == (64, 1, 32, 32) and targets.shape == (64, 10)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(64))
    # each image is mixed with its neighbour in the batch: unless the two share a class, no label is certain
    different = labels != labels.roll(1)
    assert (targets.max(dim=1).values[different] < 1).all() and different.sum() > 40
    logits = torch.randn(64, 10, requires_grad=True)
    for loss in (torch.nn.CrossEntropyLoss(label_smoothing=0.1), FocalLoss(gamma=2.0)):
        value = loss(logits, targets)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_swin_relative_position_index_and_its_figure(tmp_path):
    """What experiments/imagenet-swin/relative_position_bias.md says of the index, and its figure redrawn."""
    import importlib.util

    from timm.models.swin_transformer import get_relative_position_index

    index = get_relative_position_index(7, 7)
    assert index.shape == (49, 49) and index.min() == 0 and index.max() == 168 and len(index.unique()) == 169
    assert (index.diagonal() == 84).all(), "a token and itself: offset (0, 0), the table's middle row"
    assert index[0, 8] == index[5 * 7 + 5, 6 * 7 + 6], "the same offset in two places reads the same row"
    script = ROOT / "experiments" / "imagenet-swin" / "relative_position_bias.py"
    spec = importlib.util.spec_from_file_location("relative_position_bias", script)
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    out = figure.main(["--out", str(tmp_path / "bias.png")])
    assert out.stat().st_size > 20_000
