"""What a run shows in TensorBoard beside the scalars (callbacks.review_images, callbacks.throughput), read back
from the event files, and the pictures it is drawn from."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import trainer
from image_classification.callbacks.review import ReviewImages, displayable, target_caption
from image_classification.evaluation.figures import BAR, bar_chart_image, confusion_image, image_grid


def events(run: Path) -> EventAccumulator:
    return EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()


def picture(event) -> torch.Tensor:
    """A logged image, decoded, as 3 x H x W uint8 (the layout the figures are drawn in)."""
    array = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def test_a_run_shows_its_inputs_confusion_matrices_mistakes_and_speed(make_config, tmp_path):
    epochs = 2
    report = trainer.train(make_config("logger=tensorboard", f"trainer.max_epochs={epochs}"))
    run = tmp_path / "run"
    log = events(run)
    (inputs,) = log.Images("train/inputs")  # once per run, the first batch
    assert inputs.step == 0 and inputs.width > 7 * 96
    validations = log.Images("val/confusion_matrix")
    assert len(validations) == epochs and len(log.Images("val/acc_per_class")) == epochs
    assert [e.step for e in validations] == [e.step for e in log.Scalars("val/acc")]
    if report["metrics"]["val/acc"] < 1:
        assert log.Images("val/mistakes")[-1].step == validations[-1].step

    # The test's confusion matrix is the one of the test's own predictions (report.json), drawn.
    evaluation = json.loads((run / "report.json").read_text())
    names = [str(i) for i in range(10)]
    expected = torch.zeros(10, 10, dtype=torch.long)
    for example in evaluation["examples"]:
        expected[names.index(example["label"]), names.index(example["predicted"])] += 1
    assert int(expected.sum()) == evaluation["score"]["n"]
    right, total = int(expected.trace()), int(expected.sum())
    title = f"test: {right}/{total} right ({100 * right / total:.2f}%)"
    (test,) = log.Images("test/confusion_matrix")
    assert torch.equal(picture(test), confusion_image(expected, names, title))
    (bars,) = log.Images("test/acc_per_class")
    assert bars.step == test.step

    # Throughput counts images: per epoch, at least the training images over the whole epoch's time.
    throughput, epoch_time = log.Scalars("train/throughput"), log.Scalars("train/epoch_time")
    assert len(throughput) == len(epoch_time) == epochs
    for speed, seconds in zip(throughput, epoch_time, strict=True):  # digits: over 1,200 training images
        assert seconds.value > 0 and speed.value * seconds.value >= 1200


def test_other_loggers_get_the_settings_and_no_images(make_config, tmp_path):
    trainer.train(make_config("logger=csv", "trainer.max_epochs=1", "optimizer.lr=0.0042"))
    assert not (tmp_path / "run" / "tensorboard").exists()
    (hparams,) = (tmp_path / "run" / "csv").rglob("hparams.yaml")
    settings = yaml.safe_load(hparams.read_text())
    assert settings["optimizer.lr"] == 0.0042 and settings["network._target_"].endswith("SmallCNN")


def test_jigsaw_classes_get_no_confusion_matrix():
    review = ReviewImages(inputs=4, mistakes=4, max_classes=10, max_bars=5)
    module = type("Module", (), {"class_names": ["a", "b"], "per_class_metrics": False})()
    assert review._classes(module) is None


def test_confusion_counts_every_prediction_and_mistakes_keep_the_most_confident():
    review = ReviewImages(inputs=4, mistakes=3, max_classes=10, max_bars=5)
    module = type("Module", (), {"class_names": ["a", "b", "c"], "per_class_metrics": True, "device": "cpu"})()
    review._start(module)
    expected = torch.zeros(3, 3, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    everything = []
    for _ in range(4):
        logits = torch.randn(8, 3, generator=generator) * 3
        labels = torch.randint(0, 3, (8,), generator=generator)
        images = torch.rand(8, 1, 4, 4, generator=generator)
        update = review._update({"logits": logits}, (images, labels))
        review._remember_mistakes(images, *update)
        for t, p in zip(labels, logits.argmax(-1), strict=True):
            expected[t, p] += 1
        confidence, predicted = logits.softmax(-1).max(-1)
        everything += [
            (float(c), i) for c, i, p, t in zip(confidence, images, predicted, labels, strict=True) if p != t
        ]
    assert torch.equal(review.confusion, expected)
    top = sorted(everything, key=lambda x: -x[0])[:3]
    assert review.wrong["confidence"].tolist() == pytest.approx([c for c, _ in top])
    for kept, (_, image) in zip(review.wrong["images"], top, strict=True):
        assert torch.equal(kept, image)
    assert (review.wrong["labels"] != review.wrong["predicted"]).all()


def test_mixed_labels_name_both_classes_and_normalization_is_undone():
    names = ["cat", "dog", "fox"]
    assert target_caption(torch.tensor(2), names) == "fox"
    assert target_caption(torch.tensor([0.0, 1.0, 0.0]), names) == "dog"
    assert target_caption(torch.tensor([0.7, 0.0, 0.3]), names) == "cat 70%\nfox 30%"
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(-1, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(-1, 1, 1)
    pictures = torch.rand(2, 3, 5, 5)
    assert torch.allclose(displayable((pictures - mean) / std, (mean, std)), pictures, atol=1e-6)
    shifted = displayable(pictures * 4 - 2, None)  # unknown normalization: stretched to [0, 1] each
    assert shifted.amin() == 0 and shifted.amax() == 1


def test_bars_are_as_long_as_their_values_and_figures_fit_their_titles():
    def bar_pixels(values):
        image = bar_chart_image(values, [f"class {i}" for i in range(len(values))])
        return int((image == torch.tensor(BAR, dtype=torch.uint8).view(3, 1, 1)).all(dim=0).sum())

    full = bar_pixels([1.0])
    assert full > 0 and bar_pixels([1.0, 0.5, 0.25, 0.0]) == pytest.approx(1.75 * full, rel=0.02)
    title = "a title much wider than a two-class confusion matrix would be on its own"
    assert confusion_image(torch.eye(2, dtype=torch.long), ["a", "b"], title).shape[2] > 300
    assert (
        confusion_image(torch.eye(200, dtype=torch.long), [str(i) for i in range(200)]).shape[1:]
        == (confusion_image(torch.eye(200, dtype=torch.long) * 7, [str(i) for i in range(200)]).shape[1:])
    )
    grid = image_grid(torch.rand(10, 3, 8, 8), [str(i) for i in range(10)], columns=4, tile=32)
    assert grid.dtype == torch.uint8 and grid.shape[0] == 3 and grid.shape[2] >= 4 * 32
