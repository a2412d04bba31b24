"""Resuming as a user does it, from the command line: `hydra.run.dir=<run> ckpt_path=last [overrides]`."""

import torch
import yaml
from test_errors import assert_clear_error, run_trainer

QUICK = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=none"]


def records(run):
    return {name: (run / name).read_bytes() for name in ("config.yaml", "overrides.yaml", "metrics.json")}


def step(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def test_a_resumed_run_takes_its_saved_config_and_a_failed_attempt_changes_nothing(tmp_path):
    run = tmp_path / "logs" / "run"
    first = run_trainer(tmp_path, "hydra.run.dir=logs/run", "trainer.max_epochs=2", "seed=3", *QUICK)
    assert first.returncode == 0, first.stdout + first.stderr
    assert step(run) == 6

    # Nothing given but the checkpoint: the run's own 2 epochs and 3 batches, so nothing is left to train.
    again = run_trainer(tmp_path, "hydra.run.dir=logs/run", "ckpt_path=last")
    assert again.returncode == 0, again.stdout + again.stderr
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["trainer"]["max_epochs"], config["trainer"]["limit_train_batches"], config["seed"]) == (2, 3, 3)
    assert step(run) == 6

    # A new value overrides the saved one; the rest stays.
    longer = run_trainer(tmp_path, "hydra.run.dir=logs/run", "ckpt_path=last", "trainer.max_epochs=3")
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert step(run) == 9
    overrides = yaml.safe_load((run / "overrides.yaml").read_text())
    assert "trainer.max_epochs=3" in overrides and "trainer.max_epochs=2" not in overrides and "seed=3" in overrides

    # An attempt that cannot run leaves the run's records as they were.
    before = records(run)
    shorter = run_trainer(tmp_path, "hydra.run.dir=logs/run", "ckpt_path=last", "trainer.max_epochs=1")
    assert_clear_error(shorter, "has trained 3 epochs but trainer.max_epochs=1")
    assert records(run) == before
    assert step(run) == 9
