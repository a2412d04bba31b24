"""The Optuna sweep as a user runs it: failed trials are recorded and skipped, a second run continues."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT
from optuna.trial import TrialState

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
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{cwd}/logs/optuna-{study_name}.db")


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


@pytest.mark.slow
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


def write_hp_search(tmp_path, name, text):
    """A search of the user's own in --config-dir, built on the shipped digits_optuna."""
    folder = tmp_path / "my_configs" / "hp_search"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(f"# @package _global_\ndefaults:\n  - digits_optuna\n{text}")
    return [f"--config-dir={folder.parent}", f"hp_search={name}"]


def random_seed_drawing(choices, order):
    """A seed with which the sweep's TPE sampler, in its random start-up trials (digits_optuna: 8), draws
    ``choices[i]`` for ``i`` in ``order``, one trial each."""
    distribution = optuna.distributions.CategoricalDistribution(choices)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in range(1000):
        drawn = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8))
        if [drawn.ask({"x": distribution}).params["x"] for _ in order] == [choices[i] for i in order]:
            return seed
    raise AssertionError(f"no seed draws {order}")


@pytest.mark.slow
def test_a_clearly_worse_trial_is_pruned_and_the_sweep_reports_every_trial(tmp_path):
    # Everything fixed but the learning rate, drawn by a seed that gives two trials at lr 3e-3 (the same run
    # twice), then one at lr 1e-9, which learns nothing: after its first epoch its validation NLL is far above
    # the median of the two before it at that epoch.
    seed = random_seed_drawing([3.0e-3, 1.0e-9], [0, 0, 1])
    search = write_hp_search(
        tmp_path,
        "prune",
        "hydra:\n  sweeper:\n    study_name: prune\n    params:\n      optimizer.weight_decay: 0.01\n"
        "      loss.label_smoothing: 0.0\n      network.dropout: 0.1\n      data.batch_size: 64\n"
        "      optimizer.lr: choice(3.0e-3, 1.0e-9)\n",
    )
    pruner = ["callbacks.pruning.pruner.n_startup_trials=2", "callbacks.pruning.pruner.n_warmup_steps=0"]
    settings = [*search, *pruner, "trainer.max_epochs=3", "scheduler=none", "print_config=false",
                f"hydra.sweeper.sampler.seed={seed}"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "--multirun", *settings, "hydra.sweeper.n_trials=3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    trials = study(tmp_path, "prune").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert [len(t.intermediate_values) for t in trials] == [3, 3, 1]  # reported after each epoch; pruned after one
    assert trials[2].intermediate_values[0] > 2 * trials[0].intermediate_values[0]
    assert not (Path(trials[2].user_attrs["run_dir"]) / "metrics.json").exists()  # stopped, never tested
    assert "Trial 2 pruned after epoch 0: val/nll=" in result.stdout + result.stderr
    sweep_dir = max(tmp_path.glob("logs/train/multiruns/*"))
    rows = list(csv.DictReader((sweep_dir / "trials.csv").open()))
    assert [(int(r["number"]), r["state"]) for r in rows] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED")]
    assert float(rows[0]["value"]) == pytest.approx(trials[0].value)
    assert f"Best trial 0: value {trials[0].value:.6g}" in result.stdout + result.stderr
    assert "Error executing job" not in result.stdout + result.stderr  # pruning is not an error
    for plot in ("optimization_history", "parallel_coordinate"):
        assert (sweep_dir / f"{plot}.png").stat().st_size > 10_000
    # TensorBoard's HParams tab: every trial, the pruned one too, with the settings the trial set, and results.
    searched = {"optimizer.lr", "optimizer.weight_decay", "loss.label_smoothing", "network.dropout", "data.batch_size"}
    for trial in trials:
        settings, results = hparams(Path(trial.user_attrs["run_dir"]) / "tensorboard")
        assert set(settings) == searched | {"trainer.max_epochs"}
        assert settings["optimizer.lr"] == pytest.approx(1e-9 if trial.number == 2 else 3e-3)
        assert 0 <= results["hp/val_acc_best"] <= 1
        assert ("hp/test_acc" in results) == (trial.state.name == "COMPLETE")


def hparams(directory: Path) -> tuple[dict, dict]:
    """A run's HParams, read back from its event files: its settings, and its ``hp/*`` results."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(directory)).Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    # TensorBoard takes a directory's columns from the first run it reads: every trial declares every metric
    assert [m.name.tag for m in experiment.metric_infos] == [
        "hp/val_acc_best",
        "hp/test_acc",
        "hp/test_loss",
        "hp/test_nll",
    ]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    settings = {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in start.hparams.items()}
    results = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("hp/")}
    return settings, results


def running_sweep(tmp_path, name, epochs):
    """A sweep whose trials train for ``epochs``, started in the background; returns it once its first trial runs."""
    search = write_hp_search(tmp_path, name, f"hydra:\n  sweeper:\n    study_name: {name}\n    n_trials: 3\n")
    before = set(tmp_path.glob("logs/train/multiruns/*"))
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "trainer.py"), "--multirun", *search, f"trainer.max_epochs={epochs}",
         "print_config=false", "logger=none"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        started = set(tmp_path.glob("logs/train/multiruns/*")) - before
        if any((d / "0" / "checkpoints" / "last.ckpt").exists() for d in started):  # its first trial is training
            return process, search
    process.kill()
    raise AssertionError(process.communicate()[0][-3000:])


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_a_killed_sweeps_trial_is_failed_when_it_starts_again(tmp_path):
    process, search = running_sweep(tmp_path, "stop", epochs=300)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode != 0
    assert "Sweep stopped: trials [0] marked FAIL" in output, output[-3000:]
    assert [t.state.name for t in study(tmp_path, "stop").trials] == ["FAIL"]  # and no further trial started
    assert len(list(tmp_path.glob("logs/train/multiruns/*/trials.csv"))) == 1

    process, _ = running_sweep(tmp_path, "stop", epochs=300)
    process.kill()  # SIGKILL: nothing can record anything; the trial stays RUNNING
    process.wait()
    assert [t.state.name for t in study(tmp_path, "stop").trials] == ["FAIL", "RUNNING"]
    # the same command again (the study's setting), with no trial to run: only what a start does
    again = subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "--multirun", *search, "trainer.max_epochs=300",
         "print_config=false", "logger=none", "hydra.sweeper.n_trials=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Trials [1] were left RUNNING by a sweep that stopped: marked FAIL" in again.stdout + again.stderr
    assert [t.state.name for t in study(tmp_path, "stop").trials] == ["FAIL", "FAIL"]


@pytest.mark.slow
def test_two_joblib_jobs_run_a_batch_of_trials_in_parallel(tmp_path):
    result = sweep(
        tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=2", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
    )  # fmt: skip
    first, second = study(tmp_path, "digits").trials
    assert first.state.name == second.state.name == "COMPLETE"
    assert first.datetime_start < second.datetime_complete and second.datetime_start < first.datetime_complete
    assert "Study digits: 2 trials, 2 COMPLETE" in result.stdout + result.stderr
    assert "…" not in result.stdout + result.stderr  # the table of trials is printed whole


@pytest.mark.slow
def test_two_worker_processes_share_one_study(tmp_path):
    command = [sys.executable, "-m", "image_classification.sweeps", "--workers", "2", "hp_search=digits_optuna",
               "hydra.sweeper.n_trials=5", *QUICK]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=readme_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 workers on study digits" in result.stdout
    trials = study(tmp_path, "digits").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5, "the workers sampled the same points"
    workers = {t.user_attrs["sweeper"] for t in trials}
    assert len(workers) == 2  # 3 trials by one worker, 2 by the other
    sweep_dirs = sorted(tmp_path.glob("logs/train/multiruns/*"))
    assert len(sweep_dirs) == 3 and sweep_dirs[-1].name.endswith("_study")  # one per worker, and the report
    assert len((sweep_dirs[-1] / "trials.csv").read_text().splitlines()) == 6
    # the plots once, of the whole study: not by each worker for its share
    assert [len(list(d.glob("*.png"))) for d in sweep_dirs] == [0, 0, 3]


def readme_env():
    """The environment with this checkout importable, as `python -m image_classification...` needs it."""
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_a_study_storage_cannot_run_code_through_its_trials(tmp_path):
    """A sweep's storage comes from outside. Optuna's CMA-ES sampler unpickles the state it finds in the study's
    trials, so it is refused on a stored study, in one line, before the study is read; and a trial planted with
    parameters of its own (each would become an override of its run) is marked FAIL, not run."""
    import pickle

    from optuna.distributions import CategoricalDistribution
    from test_errors import RunsAShellCommand

    marker = tmp_path / "pwned"
    name = "planted"
    (tmp_path / "logs").mkdir()
    planted = optuna.create_study(study_name=name, storage=f"sqlite:///{tmp_path}/logs/optuna-{name}.db")
    trial = planted.ask()
    payload = pickle.dumps(RunsAShellCommand(marker)).hex()
    planted._storage.set_trial_system_attr(trial._trial_id, "cma:optimizer:0", payload)  # what CMA-ES reads back
    planted.tell(trial, 1.0)
    params = {"+callbacks.evil._target_": "subprocess.call", "+callbacks.evil.args": f"[touch,{marker}]"}
    planted.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=params,
        distributions={k: CategoricalDistribution([v]) for k, v in params.items()},
    ))  # fmt: skip
    command = [sys.executable, str(ROOT / "trainer.py"), "--multirun", "hp_search=digits_optuna",
               f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=1", *QUICK]  # fmt: skip
    result = subprocess.run([*command, "hydra/sweeper/sampler=cmaes"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith("Error: hydra/sweeper/sampler=cmaes keeps its state")
    result = sweep(tmp_path, *command[3:])
    assert "came with parameters this sweep did not choose (+callbacks.evil._target_" in result.stdout + result.stderr
    assert states(tmp_path, name) == ["COMPLETE", "COMPLETE", "FAIL"]  # the planted one failed, one trial ran
    assert not marker.exists()


def run_sweep(cwd, *overrides):
    return subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "--multirun", *overrides, *QUICK],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_sweep_whose_first_trials_all_fail_alike_stops_in_one_line_and_exits_1(tmp_path):
    # MNIST offline and not downloaded: every trial would fail the same way (30 of 30 did, and the sweep exited 0)
    result = run_sweep(tmp_path, "hp_search=mnist_optuna", "data.download=false", "hydra.sweeper.n_trials=30")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "the sweep's first 3 trials all failed with the same error, so it stops" in output, output[-3000:]
    assert "Traceback" not in output
    assert states(tmp_path, "mnist") == ["FAIL"] * 3


@pytest.mark.slow
def test_a_study_is_continued_only_with_the_fixed_overrides_it_was_started_with(tmp_path):
    sweep(tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=1", "optimizer=adamw")
    other = run_sweep(tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=1", "optimizer=sgd")
    output = other.stdout + other.stderr
    assert other.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert "study digits was started with other fixed overrides (optimizer=adamw then, optimizer=sgd now)" in output
    assert "hydra.sweeper.study_name=" in output
    assert states(tmp_path, "digits") == ["COMPLETE"]
    # what only changes how trials run (loader workers) continues it
    sweep(tmp_path, "hp_search=digits_optuna", "hydra.sweeper.n_trials=1", "optimizer=adamw", "data.num_workers=0")
    assert states(tmp_path, "digits") == ["COMPLETE"] * 2


def test_the_setting_of_a_study_is_its_fixed_overrides_less_those_that_do_not_change_results():
    from image_classification.errors import UserError
    from image_classification.sweeps.sweeper import check_same_setting, fixed_setting

    setting = fixed_setting({"optimizer": "adamw", "trainer.max_epochs": 2, "data.num_workers": 4}, ["~logger"])
    assert setting == {"optimizer": "adamw", "trainer.max_epochs": "2"}
    study = optuna.create_study()
    check_same_setting(study, setting)
    check_same_setting(study, dict(setting))
    differences = r"no seed then, seed=3 now; trainer.max_epochs=2 then, trainer.max_epochs=1 now"
    with pytest.raises(UserError, match=differences):
        check_same_setting(study, {**setting, "trainer.max_epochs": "1", "seed": "3"})


class FailedJob:
    """A Hydra job that raised ``error``, as the launcher returns it."""

    hydra_cfg = None
    _return_value = None

    def __init__(self, error):
        self.error = error

    @property
    def return_value(self):
        raise self.error


def test_three_trials_failing_alike_stop_a_sweep_but_diverged_ones_do_not():
    from image_classification.errors import Diverged, UserError
    from image_classification.sweeps.sweeper import StudySweeperImpl

    def sweeper():
        impl = object.__new__(StudySweeperImpl)
        impl.n_trials, impl.max_failure_rate, impl.completed, impl.pruned, impl.errors = 30, 1.0, 0, 0, []
        return impl, optuna.create_study()

    impl, study = sweeper()  # a learning rate high enough to diverge: FAIL, and the sweep goes on
    for _ in range(3):
        impl._tell(study, [study.ask()], [FailedJob(Diverged("optimized_metric val/nll is NaN: the run diverged"))])
        impl._stop_when_failing_alike()
    impl, study = sweeper()  # data that cannot be read: every trial would fail the same way
    for number in range(3):
        impl._tell(study, [study.ask()], [FailedJob(UserError("data directory /x does not exist"))])
        if number < 2:
            impl._stop_when_failing_alike()
    with pytest.raises(UserError, match="first 3 trials all failed with the same error, so it stops: UserError: data"):
        impl._stop_when_failing_alike()
