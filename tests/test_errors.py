"""Bad input from a user gets one clear line and a non-zero exit, never a traceback."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, write_image_folder


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
