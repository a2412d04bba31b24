"""train(cfg) end to end: experiments, accuracy, metrics.json, checkpoints, resume, reproducibility."""

import importlib.metadata
import json
import subprocess

import lightning as L
import pytest
import torch
from conftest import ROOT, choices, write_cifar10, write_mnist
from omegaconf import OmegaConf

import trainer
from image_classification import load_network, read_checkpoint
from image_classification.checkpoint import METADATA_KEY, RunMetadata, run_metadata
from image_classification.config import instantiate

QUICK = ["trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_fast_dev_run_of_every_experiment(make_config, tmp_path, experiment):
    write_mnist(tmp_path / "data")
    write_cifar10(tmp_path / "data")
    cfg = make_config(f"experiment={experiment}", "debug=fdr", "data.batch_size=8")
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


def test_metrics_json_and_checkpoints(make_config, tmp_path):
    report = trainer.train(make_config("trainer.max_epochs=2", *QUICK))
    run = tmp_path / "run"
    assert report["best_checkpoint"] and report["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert set(json.loads((run / "metrics.json").read_text())) == {
        "metrics",
        "best_checkpoint",
        "last_checkpoint",
        "wall_time_s",
        "run_dir",
        "git_commit",
    }
    assert "test/acc_class/9" in report["metrics"]


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
    images, _ = datamodule.on_after_batch_transfer(next(iter(datamodule.test_dataloader())), 0)
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(network(images), module(images), rtol=0, atol=0)
    assert not network.training
    assert read_checkpoint(path)[METADATA_KEY]["config"]["network"] == metadata["config"]["network"]


def test_load_network_refuses_an_untrusted_target(make_config, tmp_path):
    report = trainer.train(make_config("trainer.max_epochs=1", *QUICK, "network=small_cnn"))
    checkpoint = torch.load(report["best_checkpoint"], weights_only=True)
    checkpoint[METADATA_KEY]["config"]["network"] = {"_target_": "os.system", "command": "echo pwned"}
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    with pytest.raises(Exception, match="os.system"):
        load_network(tampered)


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


def test_users_own_network_class(make_config):
    cfg = make_config(
        "network._target_=tests.helpers.TinyMLP",
        "~network.widths",
        "~network.convs_per_stage",
        "~network.dropout",
        "~network.in_channels",
        "+network.in_features=64",
        "debug=fdr",
    )
    assert trainer.train(cfg)["metrics"]["test/acc"] >= 0.0


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


@pytest.mark.parametrize("scheduler", ["plateau", "one_cycle", "step", "none"])
def test_every_scheduler_trains(make_config, scheduler):
    report = trainer.train(make_config(f"scheduler={scheduler}", "trainer.max_epochs=2", *QUICK, "logger=csv"))
    assert report["metrics"]["test/acc"] >= 0.0


def test_objective_names_missing_metrics_and_rejects_nan():
    report = {"metrics": {"val/acc": 0.5, "val/loss": float("nan")}}
    assert trainer.objective(report, "val/acc") == 0.5
    with pytest.raises(trainer.UserError, match="available: val/acc, val/loss"):
        trainer.objective(report, "val/accuracy")
    with pytest.raises(trainer.UserError, match="NaN"):
        trainer.objective(report, "val/loss")
