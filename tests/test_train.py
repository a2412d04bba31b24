"""train(cfg) end to end: experiments, accuracy, metrics.json, checkpoints, resume, reproducibility."""

import csv
import importlib.metadata
import json
import math
import re
import subprocess
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import ROOT, choices, write_cifar10, write_image_folder, write_imagenet, write_mnist, write_tiny_imagenet
from omegaconf import OmegaConf

import trainer
from image_classification import load_network, read_checkpoint
from image_classification.checkpoint import METADATA_KEY, RunMetadata, run_metadata
from image_classification.config import instantiate
from image_classification.errors import UserError
from image_classification.schedulers import scheduler_steps
from tests.helpers import read_lines

QUICK = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]


# Tiny sizes for the ImageNet recipes, on a miniature ImageNet folder the test writes.
IMAGENET_TINY = ["data.image_size=32", "data.eval_image_size=32", "data.eval_resize=36"]
# And for jigsaw pretraining at the paper's sizes: 3x3 puzzles of 8 px tiles, 100 permutations.
JIGSAW_FOLDER_TINY = ["data.resize=32", "data.crop_size=30", "data.image_size=8", "data.permutations=100"]


def experiment_runs():
    """(experiment, debug overlay); the 3-epoch `limit` runs of the big networks are marked slow."""
    for experiment in choices("experiment"):
        for debug in ("fdr", "limit"):
            slow = debug == "limit" and (experiment.startswith("imagenet") or experiment == "digits-swin")
            yield pytest.param(experiment, debug, marks=pytest.mark.slow) if slow else (experiment, debug)


@pytest.mark.parametrize("experiment, debug", list(experiment_runs()))
def test_every_experiment_runs_under_the_debug_overlays(make_config, tmp_path, experiment, debug):
    write_mnist(tmp_path / "data")
    write_cifar10(tmp_path / "data")
    extra = []
    if experiment.startswith("imagenet"):
        extra = [f"data.root={write_imagenet(tmp_path / 'imagenet')}", *IMAGENET_TINY]
    elif experiment == "jigsaw-places365":
        extra = [f"data.root={write_image_folder(tmp_path / 'photos')}", *JIGSAW_FOLDER_TINY]
    elif experiment == "linear-eval-tiny-imagenet":
        extra = [f"data.root={write_tiny_imagenet(tmp_path / 'tiny')}", "data.num_classes=3", "data.num_workers=0"]
    cfg = make_config(f"experiment={experiment}", f"debug={debug}", "data.batch_size=8", *extra)
    report = trainer.train(cfg)
    assert 0.0 <= report["metrics"]["test/acc"] <= 1.0
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.slow
def test_default_job_reaches_99_percent(make_config, tmp_path):
    """The embedded default, exactly as `python trainer.py` runs it."""
    report = trainer.train(make_config())
    assert report["metrics"]["test/acc"] >= 0.99, report["metrics"]
    run = tmp_path / "run"
    written = json.loads((run / "metrics.json").read_text())
    assert written["metrics"]["test/acc"] == report["metrics"]["test/acc"]
    assert {"val/acc", "val/loss", "val/acc_best", "test/acc", "test/acc_top5", "test/loss"} <= written[
        "metrics"
    ].keys()
    assert written["wall_time_s"] > 0
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert written["best_checkpoint"].startswith(str(run / "checkpoints"))
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").read_text().startswith("task_name: train")


def test_debug_overfit_drives_the_training_loss_to_zero(make_config, tmp_path):
    trainer.train(make_config("debug=overfit", "logger=csv"))
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    losses = [float(row["train/loss_epoch"]) for row in rows if row.get("train/loss_epoch")]
    assert len(losses) == 30 and losses[-1] < 0.05, losses


def test_metrics_json_and_checkpoints(make_config, tmp_path):
    report = trainer.train(make_config("trainer.max_epochs=2", *QUICK))
    run = tmp_path / "run"
    assert report["best_checkpoint"] and report["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert report["tested_checkpoint"] == report["best_checkpoint"]
    assert set(json.loads((run / "metrics.json").read_text())) == {
        "metrics",
        "tested_checkpoint",
        "tested_epoch",
        "best_checkpoint",
        "last_checkpoint",
        "fit",
        "wall_time_s",
        "run_dir",
        "git_commit",
    }
    assert report["fit"] is None  # trained by the optimizer, not fitted in closed form
    assert {"test/acc_class/9", "val/nll", "test/nll", "test/acc_top5"} <= report["metrics"].keys()
    assert yaml.safe_load((run / "overrides.yaml").read_text()) == []  # composed without a command line
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2


def test_last_checkpoint_is_the_last_epoch_when_that_is_not_the_best(make_config, tmp_path):
    """Lightning's own save_last writes last.ckpt only with a new best; here the best is epoch 0, by
    construction: the best checkpoint follows the learning rate, which peaks in epoch 0 and only falls."""
    vals = tmp_path / "val.jsonl"
    cfg = make_config(
        "trainer.max_epochs=4",
        *QUICK,
        "callbacks.best_checkpoint.monitor=lr",
        "callbacks.best_checkpoint.mode=max",
        "+callbacks.vals._target_=tests.helpers.ValLog",
        f"+callbacks.vals.path={vals}",
    )
    report = trainer.train(cfg)
    assert report["tested_epoch"] == 0, "precondition: the best epoch is not the last"
    assert report["last_checkpoint"] == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    last = torch.load(report["last_checkpoint"], weights_only=True)
    assert (last["epoch"], last["global_step"]) == (3, 12), "last.ckpt must hold the final weights"
    # metrics.json: the validation metrics of the checkpoint that was tested, not of the last epoch
    epochs = read_lines(vals)
    assert report["metrics"]["val/loss"] == pytest.approx(epochs[0]["val/loss"])
    assert report["metrics"]["val/loss"] != pytest.approx(epochs[-1]["val/loss"])


def test_a_class_without_test_images_is_reported_missing_not_zero(make_config, caplog):
    cfg = make_config(
        "+data.test_set._target_=tests.helpers.DigitsWithout",
        "+data.test_set._partial_=true",
        "+data.test_set.drop=[9]",
        "trainer.max_epochs=1",
        *QUICK,
        "logger=none",
    )
    report = trainer.train(cfg)
    assert "test/acc_class/0" in report["metrics"] and "test/acc_class/9" not in report["metrics"]
    assert any("no test images" in r.getMessage() and "9" in r.getMessage() for r in caplog.records)


def test_checkpoint_is_self_describing_and_loads_weights_only(make_config, tmp_path):
    report = trainer.train(make_config("trainer.max_epochs=1", *QUICK))
    checkpoint = torch.load(report["best_checkpoint"], weights_only=True)
    metadata = checkpoint[METADATA_KEY]
    assert type(metadata["config"]) is dict
    assert metadata["config"]["network"]["_target_"] == "image_classification.networks.SmallCNN"
    assert metadata["config"]["data"]["num_classes"] == 10  # resolved, not "${...}"
    assert metadata["class_names"] == [str(i) for i in range(10)]
    assert {"torch", "torchvision", "lightning", "python"} <= metadata["versions"].keys()
    assert metadata["versions"]["torch"] == importlib.metadata.version("torch")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert metadata["git_commit"].removesuffix("-dirty") == head


def test_rebuilt_network_gives_the_trained_modules_logits(make_config, tmp_path):
    cfg = make_config("trainer.max_epochs=1", *QUICK, "logger=none")
    datamodule = instantiate(cfg.data, "data")
    module = trainer.build_module(cfg)
    metadata = run_metadata(OmegaConf.to_container(cfg, resolve=True), None)
    fit = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[RunMetadata(metadata)],
    )
    fit.fit(module, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    fit.save_checkpoint(path)

    network = load_network(path)
    images, *_ = datamodule.on_after_batch_transfer(next(iter(datamodule.test_dataloader())), 0)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(images), module(images), rtol=0, atol=0)
    assert not network.training
    assert read_checkpoint(path)[METADATA_KEY]["config"]["network"] == metadata["config"]["network"]


def epochs_trained(log):
    return [json.loads(line)["epoch"] for line in log.read_text().splitlines()]


def test_resume_from_last_continues_the_saved_epoch(make_config, tmp_path):
    log = tmp_path / "epochs.jsonl"
    recorder = ["+callbacks.epochs._target_=tests.helpers.EpochLog", f"+callbacks.epochs.path={log}"]
    trainer.train(make_config("trainer.max_epochs=2", *QUICK, *recorder))
    first = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert epochs_trained(log) == [0, 1]

    trainer.train(make_config("trainer.max_epochs=4", *QUICK, *recorder, "ckpt_path=last"))
    assert epochs_trained(log) == [0, 1, 2, 3], "the resumed run must start at epoch 2, not 0"
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * first["global_step"]


def test_resume_from_a_checkpoint_file(make_config, tmp_path):
    trainer.train(make_config("trainer.max_epochs=1", *QUICK))
    saved = tmp_path / "saved.ckpt"
    (tmp_path / "run" / "checkpoints" / "last.ckpt").rename(saved)
    log = tmp_path / "epochs.jsonl"
    trainer.train(
        make_config(
            "trainer.max_epochs=2",
            *QUICK,
            f"ckpt_path={saved}",
            "+callbacks.epochs._target_=tests.helpers.EpochLog",
            f"+callbacks.epochs.path={log}",
        )
    )
    assert epochs_trained(log) == [1]


def test_users_own_network_class(make_config, tmp_path):
    cfg = make_config(
        "network._target_=tests.helpers.TinyMLP",
        "~network.widths",
        "~network.convs_per_stage",
        "~network.dropout",
        "~network.in_channels",
        "+network.in_features=64",
        "trainer.max_epochs=1",
        *QUICK,
        "logger=none",
    )
    report = trainer.train(cfg)
    with pytest.raises(UserError, match=r"pass trusted_targets=\['tests.helpers.TinyMLP'\]"):
        load_network(report["last_checkpoint"])
    network = load_network(report["last_checkpoint"], trusted_targets=["tests.helpers.*"])
    assert type(network).__name__ == "TinyMLP"


def test_users_own_dataset_class(make_config):
    cfg = make_config(
        "data.train_set._target_=tests.helpers.Stripes",
        "+data.train_set.size=200",
        "data.num_classes=2",
        "trainer.max_epochs=3",
        "data.batch_size=16",
        "logger=none",
    )
    report = trainer.train(cfg)
    assert report["metrics"]["test/acc"] >= 0.9  # stripes are easy; the data reached the network intact
    assert "test/acc_class/vertical" in report["metrics"]
    assert not [k for k in report["metrics"] if "top" in k], "top-k of 2 classes is always 1: not logged"


def test_same_seed_same_result_different_seed_different(make_config, tmp_path):
    def run(seed, name):
        cfg = make_config(
            f"seed={seed}",
            "trainer.deterministic=true",
            "trainer.max_epochs=1",
            *QUICK,
            f"paths.output_dir={tmp_path / name}",
            "logger=none",
        )
        return trainer.train(cfg)["metrics"]["test/loss"]

    assert run(3, "a") == run(3, "b")
    assert run(3, "c") != run(4, "d")


@pytest.mark.parametrize(
    "group, choice", [("optimizer", c) for c in choices("optimizer")] + [("scheduler", c) for c in choices("scheduler")]
)
def test_every_optimizer_and_scheduler_writes_checkpoints_that_load_weights_only(make_config, group, choice):
    report = trainer.train(make_config(f"{group}={choice}", "trainer.max_epochs=1", *QUICK, "logger=csv"))
    for path in {report["best_checkpoint"], report["last_checkpoint"]}:
        assert torch.load(path, weights_only=True)["optimizer_states"], path
    assert isinstance(load_network(report["last_checkpoint"]), torch.nn.Module)


@pytest.mark.parametrize("scheduler", choices("scheduler"))
def test_a_longer_resumed_run_follows_the_schedule_of_its_own_length(make_config, tmp_path, scheduler):
    """2 epochs, then `trainer.max_epochs=4 ckpt_path=last`: the learning rates of epochs 2-3 are those of an
    uninterrupted 4-epoch run (the schedule is recomputed for the new length from the current step)."""

    def run(name, epochs, *extra):
        log = tmp_path / f"{name}-{epochs}.jsonl"
        steps = ["+callbacks.steps._target_=tests.helpers.StepLog", f"+callbacks.steps.path={log}"]
        run_dir = f"paths.output_dir={tmp_path / name}"
        trainer.train(
            make_config(f"scheduler={scheduler}", f"trainer.max_epochs={epochs}", *QUICK, run_dir, *steps, *extra)
        )
        return read_lines(log)

    whole = run("whole", 4)
    run("parts", 2)
    resumed = run("parts", 4, "ckpt_path=last")
    assert [r["step"] for r in resumed] == list(range(6, 12))
    assert all(r["lr"] > 0 for r in resumed), resumed
    if scheduler != "plateau":  # plateau follows val/loss, which a resume does not reproduce exactly
        assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in whole[6:]], rel=1e-6)


def test_a_cosine_schedule_stepped_every_other_batch_ends_at_zero(make_config):
    cfg = make_config("trainer.max_epochs=4", *QUICK, "scheduler.frequency=2", "logger=none")
    report = trainer.train(cfg)
    last = torch.load(report["last_checkpoint"], weights_only=True)
    assert last["lr_schedulers"][0]["total_steps"] == 4  # one scheduler step per epoch of 3 batches
    assert last["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "interval, frequency, batches, accumulate, epochs, expected",
    [
        ("step", 1, 21, 1, 20, 420),
        ("step", 2, 3, 1, 4, 4),
        ("step", 1, 5, 2, 3, 9),
        ("epoch", 1, 5, 1, 7, 7),
        ("epoch", 2, 5, 1, 7, 3),
    ],
)
def test_scheduler_steps_counts_what_lightning_steps(interval, frequency, batches, accumulate, epochs, expected):
    fake = SimpleNamespace(
        max_epochs=epochs,
        num_training_batches=batches,
        accumulate_grad_batches=accumulate,
        estimated_stepping_batches=epochs * math.ceil(batches / accumulate),
    )
    assert scheduler_steps(fake, interval, frequency) == expected


def test_ckpt_path_last_without_a_last_checkpoint_is_an_error(make_config, tmp_path):
    with pytest.raises(UserError, match=f"there is no {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"):
        trainer.train(make_config("ckpt_path=last", "trainer.max_epochs=1", *QUICK))
    assert not (tmp_path / "run").exists()


def test_optimized_metric_is_only_required_when_set(make_config):
    report = trainer.train(make_config("trainer.max_epochs=1", *QUICK, "trainer.limit_val_batches=0", "logger=none"))
    assert not [k for k in report["metrics"] if k.startswith("val/")]
    assert report["tested_checkpoint"] == report["last_checkpoint"]


def test_objective_names_missing_metrics_and_rejects_nan():
    report = {"metrics": {"val/acc": 0.5, "val/loss": float("nan")}}
    assert trainer.objective(report, "val/acc") == 0.5
    with pytest.raises(trainer.UserError, match="available: val/acc, val/loss"):
        trainer.objective(report, "val/accuracy")
    with pytest.raises(trainer.UserError, match="NaN"):
        trainer.objective(report, "val/loss")


def test_tensorboard_hparams_hold_the_runs_real_results(make_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    overrides = ["logger=tensorboard", "trainer.max_epochs=2", "optimizer.lr=0.0042"]
    report = trainer.train(make_config(*overrides), overrides=overrides)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == pytest.approx(0.0042)
    assert start.hparams["network._target_"].string_value == "image_classification.networks.SmallCNN"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {
        "hp/val_acc_best",
        "hp/test_acc",
        "hp/test_loss",
        "hp/test_nll",
    }
    (test_acc,) = events.Scalars("hp/test_acc")
    assert test_acc.value == pytest.approx(report["metrics"]["test/acc"], abs=1e-6)
    (test_nll,) = events.Scalars("hp/test_nll")
    assert test_nll.value == pytest.approx(report["metrics"]["test/nll"], rel=1e-5)
    (best,) = events.Scalars("hp/val_acc_best")
    assert best.value == pytest.approx(report["metrics"]["val/acc_best"], abs=1e-6) and 0 < best.value <= 1


POISON = ["+callbacks.poison._target_=tests.helpers.PoisonBatch", "+callbacks.poison.epoch=1",
          "+callbacks.poison.batch=2"]  # fmt: skip


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_epochs_before(make_config, tmp_path):
    cfg = make_config("trainer.max_epochs=3", *QUICK, *POISON)
    with pytest.raises(UserError, match=re.escape("the training loss is nan at step 5 (epoch 1, batch 2)")):
        trainer.train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 0  # the last finished epoch, not the NaN one
    (best,) = [p for p in checkpoints.glob("*.ckpt") if p.name != "last.ckpt"]
    assert read_checkpoint(best)["epoch"] == 0
    assert all(torch.isfinite(w).all() for w in read_checkpoint(best)["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_nan_loss_can_skip_its_batch_without_an_update(make_config, tmp_path, caplog):
    # PoisonBatch checks that the weights after the skipped batch are the weights before it
    report = trainer.train(make_config("trainer.max_epochs=3", "module.nonfinite_loss=skip", *QUICK, *POISON))
    assert "Skipped the batch at step 5 (epoch 1, batch 2): its training loss is nan" in caplog.text
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    assert math.isfinite(report["metrics"]["test/loss"]) and report["metrics"]["test/acc"] > 0


SMALLER_THAN_A_BATCH = ["data.batch_size=2048", "+data.drop_last=true"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        *[
            pytest.param(
                [*debug, *SMALLER_THAN_A_BATCH],
                "the training split has 1294 images, fewer than a batch (data.batch_size=2048), and "
                "data.drop_last=true",
                id=f"smaller-than-a-batch-{name}",
            )
            for name, debug in (("run", []), ("fdr", ["debug=fdr"]), ("limit", ["debug=limit"]))
        ],
        pytest.param(
            ["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0 trains on no batch", id="limit-0"
        ),
        pytest.param(["trainer.limit_train_batches=0.01"], "of the 21 training batches is less than one", id="0.01"),
        pytest.param(["trainer.max_epochs=0"], "trainer.max_epochs=0 trains on no batch", id="max-epochs-0"),
    ],
)
def test_a_run_that_would_train_on_no_batch_is_refused_before_anything_is_written(
    make_config, tmp_path, overrides, message
):
    # Lightning said "No training batches", then the run tested its initial weights and reported them
    with pytest.raises(UserError, match=re.escape(message)):
        trainer.train(make_config(*overrides))
    assert not (tmp_path / "run").exists()
