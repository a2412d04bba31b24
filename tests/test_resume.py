"""Resuming as a user does it, from the command line: `hydra.run.dir=<run> ckpt_path=last [overrides]`."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import ROOT, write_image_folder
from test_errors import assert_clear_error, run_trainer

import trainer
from image_classification import read_checkpoint
from image_classification.errors import UserError
from image_classification.make_shards import main as make_shards

QUICK = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=none"]


def records(run):
    return {name: (run / name).read_bytes() for name in ("config.yaml", "overrides.yaml", "metrics.json")}


def step(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


@pytest.mark.slow
def test_a_resumed_run_takes_its_saved_config_and_a_failed_attempt_changes_nothing(tmp_path):
    run = tmp_path / "logs" / "run"
    first = run_trainer(tmp_path, "hydra.run.dir=logs/run", "trainer.max_epochs=2", "seed=3", *QUICK)
    assert first.returncode == 0, first.stdout + first.stderr
    assert step(run) == 6

    # Nothing given but the checkpoint: the run's own 2 epochs and 3 batches, so nothing is left to train.
    again = run_trainer(tmp_path, "hydra.run.dir=logs/run", "ckpt_path=last")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "called before the ``update``" not in again.stdout + again.stderr  # torchmetrics' note on val_acc_best
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


@pytest.mark.parametrize(
    "change, message",
    [
        ("network=resnet18", "holds the weights of another network: 122 weights this network has are not in it"),
        ("network.widths=[32,64,128]", "does not fit this network: network.features.0.weight is [48, 1, 3, 3] in it"),
    ],
)
def test_resuming_into_another_network_is_one_line_before_anything_runs(make_config, tmp_path, change, message):
    trainer.train(make_config("trainer.max_epochs=1", *QUICK))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(UserError, match=re.escape(message)):
        trainer.train(make_config(f"ckpt_path={last}", "trainer.max_epochs=2", change, *QUICK))
    assert last.read_bytes() == before


BREAK = ["+callbacks.break_saving._target_=tests.helpers.BreakCheckpointSaving", "+callbacks.break_saving.epoch=1"]


@pytest.mark.slow
def test_killed_while_saving_the_checkpoint_before_stays_and_the_rerun_continues(tmp_path):
    run = tmp_path / "logs" / "run"
    killed = run_trainer(tmp_path, "hydra.run.dir=logs/run", "trainer.max_epochs=3", *QUICK, *BREAK,
                         "+callbacks.break_saving.how=kill")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    checkpoints = run / "checkpoints"
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 0  # whole, and the epoch before the kill
    assert [p.name for p in checkpoints.iterdir() if ".tmp" in p.name]  # the dead process's half-written file
    resumed = run_trainer(tmp_path, "hydra.run.dir=logs/run", "ckpt_path=last", "++callbacks.break_saving.epoch=99")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 2
    assert not [p.name for p in checkpoints.iterdir() if ".tmp" in p.name]  # removed, since its writer is dead
    assert all(read_checkpoint(p)["epoch"] >= 0 for p in checkpoints.glob("*.ckpt"))  # every file whole


@pytest.mark.slow
def test_a_save_killed_during_the_first_checkpoint_does_not_block_the_run(tmp_path):
    """The temporary file of a save that was killed (``.last.<pid>.tmp.ckpt``) is never a checkpoint: resume=auto
    then starts fresh, and so does a run without it, instead of failing on every retry."""
    checkpoints = tmp_path / "logs" / "run" / "checkpoints"
    killed = run_trainer(tmp_path, "hydra.run.dir=logs/run", "trainer.max_epochs=2", *QUICK, *BREAK[:1],
                         "+callbacks.break_saving.epoch=0", "+callbacks.break_saving.how=kill")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    left = [p.name for p in checkpoints.iterdir()]
    assert left and all(name.startswith(".") and ".tmp." in name for name in left), left  # no checkpoint, one half
    for extra in (["resume=auto"], []):
        again = run_trainer(tmp_path, "hydra.run.dir=logs/run", "trainer.max_epochs=2", *QUICK, *extra)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert "starting fresh" in again.stdout + again.stderr or not extra
        assert step(tmp_path / "logs" / "run") == 6
        if not extra:
            break
        for checkpoint in checkpoints.glob("*.ckpt"):  # the next try: a run that started over, in a fresh directory
            checkpoint.unlink()
        (checkpoints / ".last.1.tmp.ckpt").write_bytes(b"half a checkpoint")


def test_a_checkpoint_saved_within_an_epoch_records_no_validation_metrics_of_earlier_weights(make_config, tmp_path):
    """``last_checkpoint.every_n_train_steps``: a last.ckpt saved after the weights moved on from the last
    validation holds no validation metrics (they were not measured of it), and evaluate reports none."""
    from image_classification.config import compose
    from image_classification.evaluate import evaluate

    last, snapshot = tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "at-step-16.ckpt"
    copy = ["+callbacks.copy._target_=tests.helpers.CopyAtStep", f"+callbacks.copy.source={last}",
            f"+callbacks.copy.path={snapshot}", "+callbacks.copy.step=17"]  # fmt: skip
    cfg = make_config("trainer.max_epochs=2", "trainer.limit_train_batches=10", "logger=none",
                      "callbacks.last_checkpoint.every_n_train_steps=4", *copy)  # fmt: skip
    trainer.train(cfg)
    within = read_checkpoint(snapshot)["image_classification"]
    assert (within["global_step"], within["val_metrics"], within["val_step"]) == (16, {}, None)
    end = read_checkpoint(last)["image_classification"]  # saved right after its epoch's validation
    assert end["global_step"] == end["val_step"] == 20 and "val/acc" in end["val_metrics"]
    cfg = compose([f"ckpt_path={snapshot}", f"paths.output_dir={tmp_path / 'eval'}", "logger=none"], "evaluate")
    assert evaluate(cfg, [], [])["checkpoint_val_metrics"] == {}


def test_resuming_with_another_optimizer_is_one_line_before_anything_runs(make_config, tmp_path):
    trainer.train(make_config("trainer.max_epochs=1", *QUICK))
    before = records(tmp_path / "run")
    with pytest.raises(UserError, match="optimizer state does not fit this run's SGD .*: resume it with the optimizer"):
        trainer.train(make_config("trainer.max_epochs=2", "optimizer=sgd", "ckpt_path=last", *QUICK))
    assert records(tmp_path / "run") == before


def test_a_full_disk_fails_the_save_in_one_line_and_keeps_the_checkpoint_before(make_config, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", torch.save)  # put back, whatever the run leaves
    cfg = make_config("trainer.max_epochs=3", *QUICK, *BREAK, "+callbacks.break_saving.how=full")
    with pytest.raises(UserError, match="could not write the checkpoint .*: No space left on device; the checkpoint "
                                        "before it is kept"):  # fmt: skip
        trainer.train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(read_checkpoint(p)["epoch"] for p in checkpoints.glob("*.ckpt")) == [0, 0]  # best and last
    assert not [p.name for p in checkpoints.iterdir() if ".tmp" in p.name]


def logged_steps(run):
    """Each logged row's step in the run's CSV log, and the steps of val/acc and test/acc, and of the training
    inputs' picture, in its TensorBoard log."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with (run / "csv" / "metrics.csv").open() as file:
        rows = [int(row["step"]) for row in csv.DictReader(file)]
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    scalars = {tag: [e.step for e in events.Scalars(tag)] for tag in ("val/acc", "test/acc")}
    return sorted(rows), scalars, [e.step for e in events.Images("train/inputs")]


@pytest.mark.slow
def test_resume_auto_starts_fresh_then_continues_and_the_logs_hold_each_step_once(tmp_path):
    logs = ["logger=[tensorboard,csv]", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2"]  # fmt: skip
    whole = run_trainer(tmp_path, "hydra.run.dir=logs/whole", "trainer.max_epochs=3", *logs)
    assert whole.returncode == 0, whole.stderr[-2000:]
    first = run_trainer(tmp_path, "hydra.run.dir=logs/run", "resume=auto", "trainer.max_epochs=2", *logs)
    assert "resume=auto: no checkpoint in" in first.stdout + first.stderr and first.returncode == 0
    again = run_trainer(tmp_path, "hydra.run.dir=logs/run", "resume=auto", "trainer.max_epochs=3", *logs)
    assert "resume=auto: continuing" in again.stdout + again.stderr and again.returncode == 0
    assert read_checkpoint(tmp_path / "logs/run/checkpoints/last.ckpt")["epoch"] == 2
    # the same rows and events as the run that was never stopped: the first run's test (step 6) is gone
    assert logged_steps(tmp_path / "logs/run") == logged_steps(tmp_path / "logs/whole")

    # Without resume=auto or ckpt_path, a run directory with checkpoints is not started over.
    fresh = run_trainer(tmp_path, "hydra.run.dir=logs/run", "trainer.max_epochs=3", *logs)
    assert_clear_error(fresh, "logs/run/checkpoints already holds checkpoints of a run: add ckpt_path=last")

    # A damaged last.ckpt: said, and the run continues from the newest readable checkpoint.
    (tmp_path / "logs/run/checkpoints/last.ckpt").write_bytes(b"not a checkpoint")
    damaged = run_trainer(tmp_path, "hydra.run.dir=logs/run", "resume=auto", "trainer.max_epochs=4", *logs)
    output = damaged.stdout + damaged.stderr
    assert damaged.returncode == 0, output[-2000:]
    assert "last.ckpt is not a readable PyTorch checkpoint" in output and "resume=auto: continuing" in output
    assert read_checkpoint(tmp_path / "logs/run/checkpoints/last.ckpt")["epoch"] == 3


@pytest.mark.parametrize("name", ["SIGTERM", pytest.param("SIGUSR1", marks=pytest.mark.slow)])
def test_a_preempted_run_saves_its_epoch_in_progress_and_the_rerun_finishes_it(tmp_path, name):
    signal_at = ["+callbacks.signal._target_=tests.helpers.SignalSelf", "+callbacks.signal.epoch=1",
                 "+callbacks.signal.batch=1", f"+callbacks.signal.signal={name}"]  # fmt: skip
    common = ["hydra.run.dir=logs/run", "resume=auto", "trainer.max_epochs=3", *QUICK]
    stopped = run_trainer(tmp_path, *common, *signal_at)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + getattr(signal, name), output[-2000:]
    assert f"Stopped by {name} at step 5 (epoch 1, batch 1)" in output and "Traceback" not in output
    last = tmp_path / "logs/run/checkpoints/last.ckpt"
    assert read_checkpoint(last)["global_step"] == 5  # the batch in progress finished, then saved
    resumed = run_trainer(tmp_path, *common, "++callbacks.signal.epoch=99")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-2000:]
    assert read_checkpoint(last)["global_step"] == 9 and read_checkpoint(last)["epoch"] == 2  # no batch lost or added


@pytest.mark.parametrize(
    "stage, batch, said, saved_step",
    [
        # Lightning's own SIGTERM handler ended these with exit 0 and nothing saved
        pytest.param("validation", 1, "Stopped by SIGTERM at the end of epoch 1 (step 6)", 6, id="validation"),
        pytest.param("sanity", 0, "Stopped by SIGTERM outside training", None, id="sanity-check"),
        pytest.param("test", 0, "Stopped by SIGTERM outside training", 9, id="testing"),
    ],
)
def test_sigterm_at_any_stage_exits_143_saying_so_and_the_rerun_continues(tmp_path, stage, batch, said, saved_step):
    signal_at = ["+callbacks.signal._target_=tests.helpers.SignalSelf", "+callbacks.signal.epoch=1",
                 f"+callbacks.signal.batch={batch}", "+callbacks.signal.signal=SIGTERM",
                 f"+callbacks.signal.stage={stage}"]  # fmt: skip
    common = ["hydra.run.dir=logs/run", "resume=auto", "trainer.max_epochs=3", *QUICK]
    stopped = run_trainer(tmp_path, *common, *signal_at)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert said in output and "Traceback" not in output
    last = tmp_path / "logs/run/checkpoints/last.ckpt"
    assert (read_checkpoint(last)["global_step"] if last.exists() else None) == saved_step
    if stage == "validation":  # the epoch's checkpoints were written; the rerun goes on with epoch 2
        resumed = run_trainer(tmp_path, *common, "++callbacks.signal.epoch=99")
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-2000:]
        assert read_checkpoint(last)["global_step"] == 9 and read_checkpoint(last)["epoch"] == 2


@pytest.mark.slow
def test_sigterm_at_random_moments_then_resume_ends_with_the_weights_of_a_run_never_stopped(tmp_path):
    """What `kill`, Docker, Kubernetes and most schedulers do: SIGTERM at any moment (a batch, validation, a
    checkpoint being written). Three kills at random steps, one of them near an epoch's end, so that it comes
    during validation or while checkpoints are written; each kill is followed by the same command again."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # 41 training steps an epoch; all 144 validation images, so validation takes a good share of an epoch
    common = ["trainer.deterministic=true", "trainer.limit_test_batches=2", "logger=none", "data/mix=mixup_cutmix",
              "data.batch_size=32", "trainer.max_epochs=3"]  # fmt: skip
    whole = run_trainer(tmp_path, "hydra.run.dir=logs/whole", *common)
    assert whole.returncode == 0, whole.stderr[-2000:]
    steps_log = tmp_path / "steps.jsonl"
    command = [sys.executable, str(ROOT / "trainer.py"), "print_config=false", "hydra.run.dir=logs/run",
               "resume=auto", *common, "++callbacks.steps._target_=tests.helpers.StepLog",
               f"++callbacks.steps.path={steps_log}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    near_an_epoch_end = rng.choice([40, 81]) - rng.randrange(2)
    for kill_step in sorted({*rng.sample(range(2, 118), 2), near_an_epoch_end}):
        delay = rng.uniform(0, 0.5)
        seen = steps_log.stat().st_size if steps_log.exists() else 0
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            lines = steps_log.read_text()[seen:].splitlines() if steps_log.exists() else []
            if lines and json.loads(lines[-1])["step"] >= kill_step:
                break
            time.sleep(0.02)
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=240)[0]
        where = f"(seed {seed}: SIGTERM {delay:.2f} s after step {kill_step})"
        assert process.returncode == 128 + signal.SIGTERM, f"{where}\n{output[-3000:]}"
        assert "Stopped by SIGTERM" in output and "Traceback" not in output, f"{where}\n{output[-3000:]}"
    resumed = run_trainer(tmp_path, "hydra.run.dir=logs/run", "resume=auto", *common)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (weights, metrics), (expected_weights, expected_metrics) = (
        final_state(tmp_path / "logs/run"),
        final_state(tmp_path / "logs/whole"),
    )
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights), f"seed {seed}: weights differ"
    assert metrics == expected_metrics, f"seed {seed}"


def final_state(run):
    """The last weights and the metrics of a run."""
    weights = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    return weights, json.loads((run / "metrics.json").read_text())["metrics"]


EXACT = ["trainer.deterministic=true", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "logger=none"]
KILL = ["+callbacks.kill._target_=tests.helpers.SignalSelf", "+callbacks.kill.signal=SIGKILL"]


@pytest.mark.parametrize(
    "setting, kill_at, saved_step",
    [
        # mixup and cutmix draw from the main process's generator: restored from the checkpoint
        pytest.param("digits", (1, 6), 16, id="mid-epoch", marks=pytest.mark.slow),
        # only epoch-end checkpoints, and epochs cut short by limit_train_batches
        pytest.param("digits-short-epochs", (2, 1), 10, id="epoch-end", marks=pytest.mark.slow),
        # per-image augmentation in 2 loader workers: each image's own seed
        pytest.param("photos", (1, 4), 12, id="photos-in-workers", marks=pytest.mark.slow),
        # shards streamed by 2 workers: the stream's position, and each image's own seed
        pytest.param("shards", (1, 4), 12, id="shards-streamed", marks=pytest.mark.slow),
    ],
)
def test_a_killed_run_resumed_ends_with_the_weights_and_metrics_of_a_run_never_stopped(
    tmp_path, setting, kill_at, saved_step
):
    settings = {
        "digits": ["data/mix=mixup_cutmix", "data.batch_size=128", "callbacks.last_checkpoint.every_n_train_steps=4"],
        "digits-short-epochs": ["data/mix=mixup_cutmix", "trainer.limit_train_batches=5"],
        "photos": [f"data.root={write_image_folder(tmp_path / 'photos', per_class=12)}", "data=image_folder",
                   "data.image_size=32", "data.batch_size=4", "data.num_workers=2", "data/auto_augment=randaugment",
                   "callbacks.last_checkpoint.every_n_train_steps=2"],
    }.get(setting)  # fmt: skip
    if setting == "shards":
        photos = write_image_folder(tmp_path / "photos", per_class=12)
        make_shards(["data=image_folder", f"data.root={photos}", f"out={tmp_path / 'shards'}", "data.num_workers=0",
                     "chunk_bytes=20KB"])  # fmt: skip
        settings = [f"data.root={tmp_path / 'shards'}", "data=shards", "data.image_size=32", "data.batch_size=4",
                    "data.num_workers=2", "data/auto_augment=randaugment",
                    "callbacks.last_checkpoint.every_n_train_steps=2"]  # fmt: skip
    common = [*EXACT, *settings, "trainer.max_epochs=3"]
    whole = run_trainer(tmp_path, "hydra.run.dir=logs/whole", *common)
    assert whole.returncode == 0, whole.stderr[-2000:]

    epoch, batch = kill_at
    killed = run_trainer(tmp_path, "hydra.run.dir=logs/run", *common, *KILL, f"+callbacks.kill.epoch={epoch}",
                         f"+callbacks.kill.batch={batch}")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run = tmp_path / "logs" / "run"
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == saved_step  # steps after it are lost
    resumed = run_trainer(tmp_path, "hydra.run.dir=logs/run", "ckpt_path=last", "++callbacks.kill.epoch=99")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    (weights, metrics), (expected_weights, expected_metrics) = final_state(run), final_state(tmp_path / "logs/whole")
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights), "the weights differ"
    assert metrics == expected_metrics


@pytest.mark.slow
def test_two_ddp_processes_step_a_plateau_schedule_on_the_same_numbers(tmp_path):
    # patience 0 and a high learning rate: the rate halves after every epoch whose val/loss does not improve
    plateau = ["scheduler=plateau", "scheduler.scheduler.patience=0", "optimizer.lr=0.1"]
    ddp = ["trainer=ddp_cpu"]
    record = [
        "+callbacks.rates._target_=tests.helpers.RankLearningRates",
        f"+callbacks.rates.directory={tmp_path}/rates",
    ]
    result = run_trainer(tmp_path, "hydra.run.dir=logs/ddp", *ddp, *plateau, *record, "trainer.max_epochs=6",
                         "data.batch_size=16", "trainer.limit_train_batches=4", "logger=none")  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    ranks = [[json.loads(line) for line in (tmp_path / "rates" / f"rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]  # fmt: skip
    assert len(ranks[0]) == 6
    # each process validates its own half of the images, but both see the loss of all of them
    assert [e["val_loss"] for e in ranks[0]] == pytest.approx([e["val_loss"] for e in ranks[1]], rel=1e-6)
    assert [e["lr"] for e in ranks[0]] == [e["lr"] for e in ranks[1]]


@pytest.mark.slow
def test_two_ddp_processes_test_every_image_exactly_once(tmp_path):
    ddp = ["trainer=ddp_cpu"]
    count = ["+callbacks.count._target_=tests.helpers.RankTestImages", f"+callbacks.count.directory={tmp_path}/count"]
    result = run_trainer(tmp_path, "hydra.run.dir=logs/ddp", *ddp, *count, "trainer.max_epochs=2", "logger=none")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    shares = [int((tmp_path / "count" / f"rank{r}.txt").read_text()) for r in (0, 1)]
    assert shares == [180, 179]  # the digits' 359 test images, none repeated to even the shares out
    report = json.loads((tmp_path / "logs/ddp/metrics.json").read_text())
    # one process scoring the same checkpoint on the same images gives the same accuracy
    evaluate = subprocess.run(
        [sys.executable, "-m", "image_classification.evaluate", f"ckpt_path={report['tested_checkpoint']}",
         f"paths.output_dir={tmp_path}/logs/eval"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert evaluate.returncode == 0, (evaluate.stdout + evaluate.stderr)[-3000:]
    single = json.loads((tmp_path / "logs/eval/metrics.json").read_text())
    assert report["metrics"]["test/acc"] == pytest.approx(single["metrics"]["test/acc"], abs=1e-6)
    # report.json gathers both processes' predictions: every test image once, in order, as one process predicts
    examples, single_examples = (json.loads((tmp_path / f"logs/{run}/report.json").read_text())["examples"]
                                 for run in ("ddp", "eval"))  # fmt: skip
    assert len(examples) == 359 and [e["id"] for e in examples] == [e["id"] for e in single_examples]
    assert [e["predicted"] for e in examples] == [e["predicted"] for e in single_examples]


@pytest.mark.slow
def test_ddp_jobs_of_a_multirun_run_once_each_in_their_own_directories(tmp_path):
    # Lightning starts DDP's second process by running the command line again: inside a sweep that would be
    # the whole sweep again, in a new sweep directory (and a second DDP job then hangs on the first's port).
    command = [sys.executable, str(ROOT / "trainer.py"), "--multirun", "trainer=ddp_cpu", "seed=1,2",
               "trainer.max_epochs=1", "print_config=false", *QUICK]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (sweep,) = (tmp_path / "logs/train/multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file() and (sweep / job / "train_ddp_process_1.log").is_file()
    assert not (tmp_path / "logs/train/runs").exists()


@pytest.mark.slow
def test_a_submitit_job_preempted_is_requeued_and_continues_to_the_run_never_stopped(tmp_path):
    common = [*EXACT, "trainer.max_epochs=3", "trainer.limit_train_batches=3"]
    whole = run_trainer(tmp_path, "hydra.run.dir=logs/whole", *common)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # what SLURM sends before a job's time limit or when it pre-empts it, at submitit's request
    preempt = ["+callbacks.signal._target_=tests.helpers.SignalSelf", "+callbacks.signal.epoch=1",
               "+callbacks.signal.batch=1", "+callbacks.signal.signal=SIGUSR2"]  # fmt: skip
    command = [sys.executable, str(ROOT / "trainer.py"), "print_config=false", "--multirun", "cluster=submitit_local"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the job's own process imports the test's callback
    sweep = subprocess.run([*command, "hydra.sweep.dir=logs/sweep", *common, *preempt], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-2000:]

    job = tmp_path / "logs/sweep/0"
    log = (job / "trainer.log").read_text()
    stopped = log.index("Stopped by SIGUSR2 at step 5 (epoch 1, batch 1)")
    requeued = log.index("Requeued job", stopped)
    assert log.index("resume=auto: continuing", requeued) > requeued  # the same job again, from its last.ckpt
    (weights, metrics), (expected_weights, expected_metrics) = final_state(job), final_state(tmp_path / "logs/whole")
    assert all(torch.equal(weights[k], expected_weights[k]) for k in expected_weights)
    assert metrics == expected_metrics


@pytest.mark.slow
def test_the_slurm_config_submits_one_task_per_gpu_told_to_save_before_its_time_limit(tmp_path):
    # No SLURM here: stand-ins for srun (which submitit looks for) and sbatch (which keeps the job script).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/job.sh\necho "sbatch: no cluster" >&2\nexit 1\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    cluster = ["cluster=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.nodes=2",
               "hydra.launcher.partition=gpu"]  # fmt: skip
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = [sys.executable, str(ROOT / "trainer.py"), *cluster]
    subprocess.run([*command, "--multirun", "hydra.sweep.dir=sweep"], cwd=tmp_path, env=env, capture_output=True)
    script = (tmp_path / "job.sh").read_text()
    for line in ("--nodes=2", "--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--signal=USR2@300",
                 "--time=1440"):  # fmt: skip
        assert f"#SBATCH {line}\n" in script, script
    assert "srun" in script and "submitit.core._submit" in script

    job = subprocess.run([*command, "--cfg", "job", "--resolve"], cwd=tmp_path, capture_output=True, text=True)
    config = yaml.safe_load(job.stdout)
    assert (config["trainer"]["devices"], config["trainer"]["num_nodes"], config["resume"]) == (4, 2, "auto")


def test_an_unseeded_run_does_not_take_the_training_order_of_a_seeded_run_before_it(make_config, monkeypatch):
    # what a seeded run (a sweep's trial before) leaves in the process
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    torch.manual_seed(42)
    report = trainer.train(make_config("seed=null", "trainer.max_epochs=1", *QUICK))
    order = read_checkpoint(report["last_checkpoint"])["DataModule"]["train_loader"]
    assert order["seed"] != 42 and order["images"] == 3 * 64  # 3 batches of 64 served
