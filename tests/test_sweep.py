"""The Optuna sweep as a user runs it: failed trials are recorded and skipped, a second run continues."""

import json
import subprocess
import sys

import optuna
import pytest
from conftest import ROOT

QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "print_config=false",
    "logger=none",
]


def sweep(cwd, *overrides):
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "--multirun", *overrides, *QUICK],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def study(cwd, study_name):
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{cwd}/logs/optuna-digits.db")


def states(cwd, study_name):
    return sorted(t.state.name for t in study(cwd, study_name).trials)


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    extra = tmp_path / "my_configs" / "hp_search"
    extra.mkdir(parents=True)
    (extra / "broken_dropout.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - digits_optuna\n"
        "hydra:\n  sweeper:\n    study_name: broken\n    n_trials: 6\n"
        "    params:\n      network.dropout: choice(1.5, 0.1)\n"  # 1.5 is not a probability
    )
    # The shipped sweep settings (sampler, seed, max_failure_rate) with a search space where some trials fail.
    sweep(tmp_path, f"--config-dir={extra.parent}", "hp_search=broken_dropout")
    found = states(tmp_path, "broken")
    assert len(found) == 6 and {"COMPLETE", "FAIL"} == set(found), found


@pytest.mark.slow
def test_a_second_sweep_continues_the_study_with_new_points(tmp_path):
    first = sweep(tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=2")
    assert "CONFIG" not in first.stdout, "the config tree is not printed for every trial"
    sweep(tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=2")
    trials = study(tmp_path, "digits").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert trials[2].params != trials[0].params and trials[3].params != trials[1].params, "a rerun repeated trials"


@pytest.mark.slow
def test_the_objective_tells_fully_trained_trials_apart(tmp_path):
    """Trained as the recipe trains (20 epochs), most trials reach 100% validation accuracy; the objective
    (the tested checkpoint's validation NLL, as metrics.json reports it) still ranks them."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "--multirun", "hp_search=digits_optuna", "hydra.sweeper.n_trials=4"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    values = sorted(t.value for t in study(tmp_path, "digits").trials)
    assert len(set(values)) == 4, values
    reported = sorted(
        json.loads(p.read_text())["metrics"]["val/nll"] for p in tmp_path.glob("logs/train/multiruns/*/*/metrics.json")
    )
    assert reported == pytest.approx(values)


def test_a_linear_evaluation_sweep_extracts_the_features_once(tmp_path):
    result = sweep(tmp_path, "hp_search=linear_eval_optuna", "hydra.sweeper.n_trials=3")
    log = result.stdout + result.stderr
    assert log.count("features: (") == 3  # train, val and test, by the first trial
    assert log.count("features: reused from memory") == 6  # the other two trials
    trials = optuna.load_study(
        study_name="linear-eval", storage=f"sqlite:///{tmp_path}/logs/optuna-linear-eval.db"
    ).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.params["optimizer.lr"] for t in trials}) == 3
