"""Bad input from a user gets one clear line and a non-zero exit, never a traceback."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, write_image_folder

import trainer
from image_classification.errors import UserError


def run_trainer(cwd, *overrides):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "print_config=false", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def assert_clear_error(result, *expected):
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, output


def error_lines(result):
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error:" in line]


def test_unknown_experiment_lists_the_valid_ones(tmp_path):
    result = run_trainer(tmp_path, "experiment=imagenet-nope")
    assert_clear_error(result, "experiment/imagenet-nope", "cifar10", "digits", "mnist")


def test_unknown_choice_of_a_group(tmp_path):
    assert_clear_error(run_trainer(tmp_path, "optimizer=adamx"), "optimizer/adamx", "adabelief", "adamw", "sgd")


def test_misspelled_key_suggests_the_right_one(tmp_path):
    assert_clear_error(run_trainer(tmp_path, "trainer.max_epoch=3"), "max_epoch", "Did you mean", "max_epochs")


def test_missing_data_directory(tmp_path):
    result = run_trainer(tmp_path, "data=image_folder", f"data.root={tmp_path / 'nowhere'}")
    assert_clear_error(result, f"data directory {tmp_path / 'nowhere'} does not exist")
    assert len(error_lines(result)) == 1


def test_missing_required_value(tmp_path):
    result = run_trainer(tmp_path, "data=image_folder")
    assert_clear_error(result, "data.root is required: add data.root=... to the command line")


def test_empty_class_folder(tmp_path):
    root = write_image_folder(tmp_path / "photos", per_class=2)
    (root / "train" / "dog").mkdir()
    result = run_trainer(tmp_path, "data=image_folder", f"data.root={root}", "data.num_classes=3")
    assert_clear_error(result, "train/dog has no images")
    assert len(error_lines(result)) == 1
    assert not list(tmp_path.glob("logs/**/*.ckpt")) and not list(tmp_path.glob("logs/**/metrics.json"))


@pytest.mark.parametrize("target", ["my_lab.nets.ResNet", "image_classification.networks.NoSuchNet"])
def test_target_that_does_not_import(tmp_path, target):
    result = run_trainer(tmp_path, f"network._target_={target}")
    assert_clear_error(result, f"_target_ '{target}' does not import")
    assert len(error_lines(result)) == 1


def test_missing_checkpoint(tmp_path):
    result = run_trainer(tmp_path, f"ckpt_path={tmp_path / 'no.ckpt'}", "trainer.max_epochs=1")
    assert_clear_error(result, "does not exist")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("network.dropout=1.5", "network: ValueError: dropout probability has to be between 0 and 1, but got 1.5"),
        ("optimizer.lr=-1", "optimizer: Invalid learning rate: -1"),
        ("data.batch_size=0", "data.batch_size must be a positive whole number, got 0"),
        ("experiment=null", "experiment=null is not a choice: use ~experiment to leave it out"),
        ("scheduler.scheduler.warmup_fraction=1.5", "scheduler: warmup_fraction must be in [0, 1), got 1.5"),
        (
            "trainer.log_every_n_steps=often",
            "trainer.log_every_n_steps must be a whole number or null (for lightning.pytorch.Trainer), not the "
            "text 'often'",
        ),
    ],
)
def test_bad_values_get_one_line_before_anything_is_written(tmp_path, override, expected):
    result = run_trainer(tmp_path, override, "trainer.max_epochs=1")
    assert_clear_error(result, expected)
    assert len([line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]) == 1
    assert not list(tmp_path.glob("logs/**/*.ckpt")) and not list(tmp_path.glob("logs/**/config.yaml"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_trainer_without_a_gpu(tmp_path):
    assert_clear_error(run_trainer(tmp_path, "trainer=gpu"), "this machine has no CUDA GPU: use trainer=cpu")


def test_ckpt_path_last_in_a_new_run_directory_says_where_it_looked(tmp_path):
    result = run_trainer(tmp_path, "hydra.run.dir=logs/new", "ckpt_path=last")
    assert_clear_error(result, f"there is no {tmp_path / 'logs/new/checkpoints/last.ckpt'}", "hydra.run.dir=")
    assert not (tmp_path / "logs/new/checkpoints").exists()


def test_a_run_without_validation_succeeds(tmp_path):
    """No val/* metric is logged; nothing asks for one outside a sweep."""
    result = run_trainer(tmp_path, "trainer.limit_val_batches=0", "trainer.max_epochs=1", "logger=none")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_run_prints_no_library_noise(tmp_path):
    result = run_trainer(tmp_path, "trainer.max_epochs=1", "logger=none")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for noise in ("litlogger", "LeafSpec", "Trainer already configured", "pin_memory", "TensorBoard:"):
        assert noise not in output, noise
    assert "Test accuracy:" in output


class RunsAShellCommand:
    """What an unsafe checkpoint carries: an object whose unpickling runs a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickled_payload_is_refused_in_one_line_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save(
        {"state_dict": {}, "image_classification": {}, "epoch": 0, "x": RunsAShellCommand(marker)},
        tmp_path / "evil.ckpt",
    )
    evaluate = [sys.executable, "-m", "image_classification.evaluate", "ckpt_path=evil.ckpt"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    for result in (
        run_trainer(tmp_path, "ckpt_path=evil.ckpt"),
        subprocess.run(evaluate, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment),
    ):
        assert_clear_error(result, "evil.ckpt is refused: it holds a pickled Python object (posix.system)")
        assert len(error_lines(result)) == 1 and "weights_only" not in result.stdout + result.stderr
    assert not marker.exists()


def test_a_truncated_checkpoint_is_named_in_one_line(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    result = run_trainer(tmp_path, "ckpt_path=cut.ckpt")
    assert_clear_error(result, "cut.ckpt is not a readable PyTorch checkpoint: it is truncated, corrupt")
    assert len(error_lines(result)) == 1


def test_an_image_size_that_is_not_positive_is_one_line(tmp_path, make_config):
    result = run_trainer(tmp_path, "data.image_size=0")
    assert_clear_error(result, "data.image_size must be a positive number of pixels, got 0")
    assert len(error_lines(result)) == 1
    from image_classification.config import instantiate

    for setting in ("data.image_size=-8", "data.eval_image_size=0", "data.eval_resize=0"):
        data = ["data=imagenet", "data.root=.", "data.num_classes=3"]
        with pytest.raises(UserError, match=f"{setting.split('=')[0]} must be a positive number of pixels"):
            instantiate(make_config(*data, setting).data, "data")


@pytest.mark.slow
def test_cluster_slurm_where_slurm_is_not_reachable_is_one_line(tmp_path):
    # submitit's 25-line traceback ended in 'Could not detect "srun"'
    result = run_trainer(tmp_path, "--multirun", "cluster=slurm", "trainer.max_epochs=1")
    assert_clear_error(result, "SLURM is not reachable from here", "cluster=submitit_local")
    assert len(error_lines(result)) == 1 and not (tmp_path / "logs").exists()
    single = run_trainer(tmp_path, "cluster=slurm", "trainer.max_epochs=1")
    assert_clear_error(single, "cluster=slurm submits jobs through Hydra's launcher, which --multirun alone uses")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=image_folder", "data.root=/nonexistent"], "data directory /nonexistent does not exist: set data.root"),
        (
            ["data=imagenet", "data.root=/nonexistent"],
            "does not exist: python -m image_classification.prepare_imagenet",
        ),
        (["experiment=linear-eval", "network.backbone.checkpoint=/no.pt"], "network.backbone.checkpoint: /no.pt does"),
    ],
    ids=["image-folder", "imagenet", "backbone"],
)
def test_a_missing_folder_or_file_is_named_by_the_key_the_user_set(make_config, overrides, message):
    # were: "DataError raised while resolving interpolation: ... object_type=dict", "data: FileNotFoundError:
    # network.checkpoint ..."
    from image_classification.config import user_message

    with pytest.raises(Exception) as info:
        trainer.train(make_config(*overrides))
    text = user_message(info.value)
    assert message in text and text.startswith(("data directory /nonexistent does not exist:", "network.backbone"))
    assert "resolving interpolation" not in text and "object_type" not in text


@pytest.mark.slow
def test_a_run_that_fails_its_checks_prints_no_config_tree_and_leaves_no_files(tmp_path):
    # the error came at the bottom of a 200-line config tree, and logs/<task>/runs/<time>/trainer.log stayed
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "data=image_folder", "data.root=/nonexistent"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_clear_error(result, "data directory /nonexistent does not exist")
    assert "CONFIG" not in result.stdout + result.stderr
    assert not any((tmp_path / "logs").iterdir())  # paths.log_dir itself stays

    empty = run_trainer(tmp_path, "hydra.run.dir=empty", "ckpt_path=last")
    assert_clear_error(empty, "ckpt_path=last: there is no")
    assert not (tmp_path / "empty").exists()
