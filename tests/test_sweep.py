"""The Optuna sweep as a user runs it: failed trials are recorded and skipped, a second run continues."""

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


def states(cwd, study_name):
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{cwd}/logs/optuna-digits.db")
    return sorted(t.state.name for t in study.trials)


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
def test_a_second_sweep_continues_the_study(tmp_path):
    sweep(tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=2")
    assert states(tmp_path, "digits") == ["COMPLETE", "COMPLETE"]
    sweep(tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=1")
    assert states(tmp_path, "digits") == ["COMPLETE"] * 3
