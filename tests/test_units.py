"""Pure functions and small parts with exact expectations."""

import json
import math
import subprocess

import pytest
import torch
import torch.nn.functional as F

from image_classification.checkpoint import git_commit
from image_classification.losses import FocalLoss
from image_classification.schedulers import WarmupCosine
from image_classification.summarize import main as summarize_main
from image_classification.transforms import RandomShift


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_focal_loss_at_gamma_zero_is_cross_entropy(label_smoothing):
    torch.manual_seed(0)
    logits, targets = torch.randn(32, 7), torch.randint(0, 7, (32,))
    focal = FocalLoss(gamma=0.0, label_smoothing=label_smoothing)
    expected = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    torch.testing.assert_close(focal(logits, targets), expected)
    soft = torch.softmax(torch.randn(32, 7), dim=1)  # probability targets, as mixup makes
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, soft), F.cross_entropy(logits, soft))


def test_focal_loss_down_weights_easy_examples():
    logits = torch.tensor([[4.0, 0.0], [0.2, 0.0]])  # a confident right answer, an unsure one
    targets = torch.tensor([0, 0])
    per_example_ce = F.cross_entropy(logits, targets, reduction="none")
    per_example_focal = FocalLoss(gamma=2.0, reduction="none")(logits, targets)
    p = torch.softmax(logits, dim=1)[:, 0]
    torch.testing.assert_close(per_example_focal, (1 - p) ** 2 * per_example_ce)
    assert per_example_focal[0] / per_example_ce[0] < per_example_focal[1] / per_example_ce[1]


def test_focal_loss_alpha_weights_classes():
    logits, targets = torch.zeros(2, 2), torch.tensor([0, 1])
    losses = FocalLoss(gamma=0.0, alpha=[1.0, 3.0], reduction="none")(logits, targets)
    torch.testing.assert_close(losses, torch.tensor([math.log(2), 3 * math.log(2)]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_focal_loss_with_alpha_at_gamma_zero_is_weighted_cross_entropy(reduction, label_smoothing):
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 4), torch.randint(0, 4, (16,))
    alpha = [0.5, 1.0, 2.0, 4.0]
    focal = FocalLoss(gamma=0.0, alpha=alpha, label_smoothing=label_smoothing, reduction=reduction)
    weight = torch.tensor(alpha)
    expected = F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    torch.testing.assert_close(focal(logits, targets), expected)
    soft = torch.softmax(torch.randn(16, 4), dim=1)
    expected_soft = F.cross_entropy(logits, soft, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    torch.testing.assert_close(focal(logits, soft), expected_soft)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0, 2.0])
def test_focal_loss_gradients_are_finite_on_confident_predictions(gamma):
    logits = torch.tensor([[30.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 50.0, 0.0], [2.0, 1.0, 0.0]], requires_grad=True)
    targets = torch.tensor([0, 0, 0, 1])  # right and sure, right and surer, wrong and sure, unsure
    loss = FocalLoss(gamma=gamma)(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), logits.grad
    assert logits.grad[2].abs().sum() > 0, "a confident wrong answer must still be corrected"


def lrs(total=100, **kwargs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosine(optimizer, total_steps=total, **kwargs)
    values = []
    for _ in range(total + 5):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_cosine_documented_values():
    values = lrs(total=100, warmup_fraction=0.1, start_factor=0.01, min_factor=0.1)
    assert values[0] == pytest.approx(0.01)
    assert values[5] == pytest.approx(0.01 + 0.99 * 5 / 10)  # linear during warmup
    assert values[10] == pytest.approx(1.0)  # the base rate when warmup ends
    assert values[55] == pytest.approx((1 + 0.1) / 2)  # half-way through the decay
    assert values[100] == pytest.approx(0.1)  # min_factor at total_steps ...
    assert values[104] == pytest.approx(0.1)  # ... and held after it
    decay = values[10:101]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_warmup_cosine_without_warmup_starts_at_base_and_ends_at_zero():
    values = lrs(total=10)
    assert values[0] == pytest.approx(1.0)
    assert values[10] == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_resumes_from_its_state_dict():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosine(optimizer, total_steps=50, warmup_fraction=0.2)
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    fresh = WarmupCosine(fresh_optimizer, total_steps=50, warmup_fraction=0.2)
    fresh.load_state_dict(state)
    fresh_optimizer.step()
    fresh.step()
    optimizer.step()
    scheduler.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("bad", [{"total_steps": 0}, {"total_steps": 10, "warmup_fraction": 1.0}])
def test_warmup_cosine_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        WarmupCosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), **bad)


def test_random_shift_is_a_per_image_padded_random_crop():
    torch.manual_seed(0)
    images = torch.randint(1, 255, (300, 2, 8, 8), dtype=torch.uint8)
    labels = torch.arange(300)
    shifted, same_labels = RandomShift(max_shift=1)(images, labels)
    assert same_labels is labels and shifted.dtype == images.dtype and shifted.shape == images.shape
    padded = F.pad(images, (1, 1, 1, 1), value=0)
    offsets = set()
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(3)
            for dx in range(3)
            if torch.equal(padded[i, :, dy : dy + 8, dx : dx + 8], shifted[i])
        ]
        assert len(matches) == 1, f"image {i} is not one crop of its padded self"
        offsets.add(matches[0])
    assert len(offsets) == 9, "every offset should occur in 300 images"
    assert torch.equal(RandomShift(max_shift=0)(images), images)


def test_summarize_gives_mean_and_sample_std(tmp_path, capsys):
    for i, accuracy in enumerate([0.99, 0.98, 0.97]):
        run = tmp_path / str(i)
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"metrics": {"test/acc": accuracy}, "wall_time_s": 10.0 + i}))
    summarize_main([str(tmp_path), "--metrics", "test/acc", "wall_time_s"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["test/acc", "98.00", "+-", "1.00%", "(n=3)"]
    assert lines[1].split() == ["wall_time_s", "11.00", "+-", "1.00", "s", "(n=3)"]


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def make_repo(path):
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "t")
    return path


def test_git_commit_of_the_framework_repository_marks_untracked_files_dirty(tmp_path):
    repo = make_repo(tmp_path / "image_classification_clone")
    (repo / "image_classification").mkdir()
    (repo / "image_classification" / "__init__.py").write_text("")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    sha = git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == sha
    (repo / "image_classification" / "new_network.py").write_text("")  # untracked code runs too
    assert git_commit(repo) == f"{sha}-dirty"


def test_git_commit_is_none_when_installed_inside_another_repository(tmp_path):
    users_repo = make_repo(tmp_path / "my_project")
    (users_repo / "notes.txt").write_text("mine")
    git(users_repo, "add", ".")
    git(users_repo, "commit", "-qm", "users commit")
    site_packages = users_repo / ".venv" / "lib" / "python3.11" / "site-packages"
    (site_packages / "image_classification").mkdir(parents=True)
    assert git_commit(site_packages) is None  # not the user's commit
    assert git_commit(tmp_path / "not_a_repo") is None
