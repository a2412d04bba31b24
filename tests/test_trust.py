"""The trust boundary (docs/trust.md): what comes from outside is read as data. Each test plants a file that
would run ``touch <marker>`` if it were read unsafely (a checkpoint's stored overrides, shards, CIFAR-10
batches, a torch hub cache, a frozen backbone's file), feeds it to the project as a user would, and checks that
the marker never appears and that the user is told, in one line, which file and why."""

import copy
import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch
import torchvision
from conftest import ROOT, compose_config, write_cifar10
from test_errors import RunsAShellCommand

import trainer
from image_classification import load_network
from image_classification.checkpoint import FROZEN_KEY, METADATA_KEY, read_checkpoint
from image_classification.config import CONFIG_DIR, compose, run_config_policy
from image_classification.data import CIFAR10, Shards
from image_classification.errors import DataError, UserError
from image_classification.evaluate import evaluate
from image_classification.networks.weights import state_digest
from image_classification.trust import checkpoint_overrides, without_starting_weights

QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "logger=none"]
# A run's own choices, which a checkpoint's overrides may bring to a new run
RECIPE = ["optimizer=sgd", "optimizer.lr=0.05", "data.batch_size=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits run's last checkpoint, composed with RECIPE (recorded as its overrides)."""
    tmp = tmp_path_factory.mktemp("trained")
    with run_config_policy():
        report = trainer.train(compose_config(tmp, *QUICK, *RECIPE), RECIPE)
    return report["last_checkpoint"]


def tampered(source, path, **metadata):
    checkpoint = torch.load(source, weights_only=True)
    checkpoint[METADATA_KEY].update(copy.deepcopy(metadata))
    torch.save(checkpoint, path)
    return path


def planted_module(folder, marker):
    """A module that creates ``marker`` when it is imported: what a name looked up by a config could import."""
    folder.mkdir(exist_ok=True)
    (folder / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\nvalue = 1\n")
    return folder


def evil_overrides(marker, elsewhere):
    return [
        *RECIPE,
        "+callbacks.pwn._target_=os.system",
        f"+callbacks.pwn.command='touch {marker}'",
        "data.eval_batch_transform.transforms.1.dtype.path=planted.value",  # a name Hydra would import
        "+network@callbacks.net=small_cnn",  # a config placed where it is instantiated as a callback
        f"paths.output_dir={elsewhere}",
        "seed=${oc.env:HOME}",
    ]


# 1. A checkpoint's stored overrides


def test_only_choices_and_plain_recipe_values_come_from_a_checkpoints_overrides(tmp_path):
    def composed(lines):
        return compose([*lines, f"paths.output_dir={tmp_path}"], "train")

    saved = [
        "experiment=digits",  # a choice: one of the user's own config files
        "optimizer=sgd",
        "optimizer.lr=0.05",
        "trainer.max_epochs=3",
        "data.root=/data/somewhere",  # a place on their machine, as each of the next two
        "data.permutation_cache=cache",
        "network.model_name=../x",
        "trainer.plugins=[]",  # the machine's, not the recipe's
        "trainer.default_root_dir=x",
        "+callbacks.pwn._target_=os.system",
        "callbacks.last_checkpoint.dirpath=/tmp/x",  # not the recipe
        "+optimizer.new_key=1",
        "network.in_channels=${oc.env:HOME}",
        "network.checkpoint=/x.pt",
        "data.download=true",
        "data.eval_batch_transform.transforms.1.dtype.path=os.system",
        "+network@callbacks.net=small_cnn",
        "hydra/launcher=joblib",
        "logger=csv",
        "callbacks=none",
        "~data.eval_batch_transform",
        "data.mix={_target_: os.system}",
        "seed=7",
    ]
    kept, left_out = checkpoint_overrides(saved, ["seed=1"], CONFIG_DIR, composed)
    assert kept == ["experiment=digits", "optimizer=sgd", "optimizer.lr=0.05", "trainer.max_epochs=3"]
    assert left_out == [
        "+network@callbacks.net=small_cnn (places a config elsewhere)",
        "hydra/launcher=joblib (not part of the recipe)",
        "logger=csv (not part of the recipe)",
        "callbacks=none (not part of the recipe)",
        "data.root=/data/somewhere (a place on the machine it was written on)",
        "data.permutation_cache=cache (a place on the machine it was written on)",
        "network.model_name=../x (a place on the machine it was written on)",
        "trainer.plugins=[] (not part of the recipe)",
        "trainer.default_root_dir=x (not part of the recipe)",
        "+callbacks.pwn._target_=os.system (not part of the recipe)",
        "callbacks.last_checkpoint.dirpath=/tmp/x (not part of the recipe)",
        "+optimizer.new_key=1 (a new key)",
        "network.in_channels=${oc.env:HOME} (not a plain value)",
        "network.checkpoint=/x.pt (starting weights (the checkpoint's own replace them))",
        "data.download=true (fetches data)",
        "data.eval_batch_transform.transforms.1.dtype.path=os.system (names an object to look up)",
        "~data.eval_batch_transform (removes a key)",
        "data.mix={_target_: os.system} (not a plain value)",
    ]


def test_resuming_a_strangers_checkpoint_runs_nothing_its_overrides_name(trained, tmp_path):
    """The README's `python trainer.py ckpt_path=<a checkpoint>` (a checkpoint, in a new run)."""
    marker, elsewhere = tmp_path / "pwned", tmp_path / "elsewhere"
    evil = tampered(trained, tmp_path / "evil.ckpt", overrides=evil_overrides(marker, elsewhere))
    environment = {**os.environ, "PYTHONPATH": f"{planted_module(tmp_path / 'modules', marker)}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainer.py"), "print_config=false", "logger=none", f"ckpt_path={evil}",
         "trainer.max_epochs=2", "trainer.limit_train_batches=2", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=environment,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not marker.exists() and not elsewhere.exists()
    (warning,) = [line for line in output.splitlines() if "left out:" in line]
    assert f"{evil} is not a checkpoint of this run's directory" in warning
    for line in evil_overrides(marker, elsewhere)[len(RECIPE) :]:
        assert line in warning, line
    config = (tmp_path / "run" / "config.yaml").read_text()  # the recipe came along
    assert "_target_: torch.optim.SGD" in config and "lr: 0.05" in config and "batch_size: 32" in config


def test_a_checkpoint_of_the_runs_own_directory_brings_all_of_its_overrides(trained, tmp_path):
    """resume=auto and ckpt_path=last continue the user's own run: its overrides are the user's own command line."""
    from image_classification.runs import resume_overrides

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    own = ["+callbacks.mine._target_=helpers.EpochLog", "+callbacks.mine.path=epochs.jsonl"]
    tampered(trained, run_dir / "checkpoints" / "last.ckpt", overrides=own)
    assert resume_overrides("last", run_dir, ["trainer.max_epochs=2"], compose) == [*own, "trainer.max_epochs=2"]


def test_evaluate_recomposes_a_checkpoints_data_without_what_its_overrides_name(trained, tmp_path, monkeypatch):
    """With data.<key>=... given, evaluate recomposes the checkpoint's data config: no resolver a stored override
    names is resolved (they read the environment, files and URLs)."""
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PLANTED_BATCH", "7")
    saved = [*RECIPE, "data.batch_size=${oc.env:PLANTED_BATCH}", "+callbacks.pwn._target_=os.system",
             f"+callbacks.pwn.command='touch {marker}'"]  # fmt: skip
    evil = tampered(trained, tmp_path / "evil.ckpt", overrides=saved)
    cfg = compose([f"ckpt_path={evil}", f"paths.output_dir={tmp_path / 'eval'}", "logger=none"], "evaluate")
    report = evaluate(cfg, [], ["data.num_workers=0"])
    assert 0 <= report["metrics"]["test/acc"] <= 1 and not marker.exists()
    assert "batch_size: 32" in (tmp_path / "eval" / "config.yaml").read_text()  # the recipe's, not the variable's


# 2. Shards


def write_shards(tmp_path, marker):
    """Digits shards whose test split stores each label as a pickle that runs a command."""
    from litdata.streaming.writer import BinaryWriter

    from image_classification.make_shards import main as make_shards

    out = tmp_path / "shards"
    make_shards([f"out={out}"])
    for file in (out / "test").iterdir():
        file.unlink()
    writer = BinaryWriter(str(out / "test"), chunk_bytes="1MB")
    data = io.BytesIO()
    PIL.Image.new("L", (8, 8)).save(data, format="PNG")
    data = data.getvalue()
    for i in range(4):
        writer[i] = {"image": data, "label": RunsAShellCommand(marker), "file": f"{i}.png".encode()}
    writer.done()
    writer.merge(1)
    assert "pickle" in (out / "test" / "index.json").read_text()
    return out


def test_shards_with_pickled_fields_are_refused_before_any_item_is_read(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    shards = write_shards(tmp_path, marker)
    index = shards / "test" / "index.json"
    with pytest.raises(DataError, match=f"{index} stores .*data=shards reads only what make_shards writes"):
        Shards(str(shards), "test")
    # every entry point that reads shards: a run, check_data, and evaluate of a checkpoint whose data names them
    with run_config_policy(), pytest.raises(UserError, match="reads only what make_shards writes"):
        trainer.train(compose_config(tmp_path, "data=shards", f"data.root={shards}", "data.num_workers=0", *QUICK))
    check = subprocess.run(
        [sys.executable, "-m", "image_classification.check_data", "data=shards", f"data.root={shards}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert check.returncode == 1 and "Traceback" not in check.stderr and "reads only what make_shards" in check.stderr
    # and were the index checked no more, litdata could still decode nothing but bytes and integers
    monkeypatch.setattr("image_classification.data.shards.check_index", lambda root, split, images: None)
    with pytest.raises(DataError, match="'pickle' fields are not read"):
        Shards(str(shards), "test")[0]
    assert not marker.exists()


def test_evaluate_of_a_checkpoint_whose_data_names_such_shards_runs_nothing(trained, tmp_path):
    marker = tmp_path / "pwned"
    shards = write_shards(tmp_path, marker)
    checkpoint = read_checkpoint(trained)
    data = copy.deepcopy(checkpoint[METADATA_KEY]["config"]["data"])
    for split in ("train", "val", "test"):
        data[f"{split}_set"] = {"_target_": "image_classification.data.Shards", "_partial_": True,
                                "root": str(shards), "split": split}  # fmt: skip
    data["val_fraction"] = data["test_fraction"] = 0.0
    config = {**checkpoint[METADATA_KEY]["config"], "data": data}
    evil = tampered(trained, tmp_path / "evil.ckpt", config=config, overrides=None)
    cfg = compose([f"ckpt_path={evil}", f"paths.output_dir={tmp_path / 'eval'}", "logger=none"], "evaluate")
    with pytest.raises(UserError, match="reads only what make_shards writes"):
        evaluate(cfg, [], [])
    assert not marker.exists()


def test_shards_whose_index_or_manifest_lie_are_refused_in_one_line(tmp_path):
    """A chunk named outside its folder, a chunk that is a link, an index whose counts are not the manifest's or
    the chunk's, a data_spec that is not make_shards' mapping: one line, before any item is read."""
    from image_classification.make_shards import main as make_shards

    out = tmp_path / "shards"
    make_shards([f"out={out}"])
    index_path, chunk = out / "test" / "index.json", out / "test" / "chunk-0-0.bin"
    original, data = index_path.read_text(), chunk.read_bytes()

    def with_index(change):
        index = json.loads(original)
        change(index)
        index_path.write_text(json.dumps(index))

    def linked():
        (tmp_path / "elsewhere.bin").write_bytes(data)
        chunk.unlink()
        chunk.symlink_to(tmp_path / "elsewhere.bin")

    for damage, message in [
        (lambda: with_index(lambda i: i["chunks"][0].update(filename="../../outside.bin")), "names a chunk '../../"),
        (lambda: with_index(lambda i: i["chunks"][0].update(chunk_size=10)), "lists [10] images in its chunks, but"),
        (lambda: with_index(lambda i: i["config"].update(data_spec="[1, []]")), "reads only what make_shards writes"),
        (lambda: chunk.write_bytes((10).to_bytes(4, "little") + data[4:]), "does not hold the 359 images its index"),
        (linked, "chunk-0-0.bin is a link: a chunk is a file of the shards"),
    ]:
        damage()
        with pytest.raises(DataError, match=re.escape(message)):
            Shards(str(out), "test")
        index_path.write_text(original)
        chunk.unlink()
        chunk.write_bytes(data)
    assert len(Shards(str(out), "test")) == 359


# 3. CIFAR-10 batches


def test_cifar10_batches_that_are_not_data_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    write_cifar10(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    assert len(CIFAR10(str(tmp_path / "data"), train=True)) == 100
    for name in ("data_batch_3", "batches.meta"):
        good = (folder / name).read_bytes()
        (folder / name).write_bytes(pickle.dumps({"data": RunsAShellCommand(marker), "labels": [0]}))
        with pytest.raises(DataError, match=f"{folder / name} is refused: .*posix.system"):
            CIFAR10(str(tmp_path / "data"), train=True)
        with run_config_policy(), pytest.raises(UserError, match=f"{name} is refused"):
            trainer.train(compose_config(tmp_path, "data=cifar10", *QUICK))
        (folder / name).write_bytes(good)
    assert not marker.exists()
    # a few bytes that ask numpy for a 30 GB array: refused before anything is allocated
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": HugeArray(), "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="builds an array of shape \\(10000000, 3072\\) the way numpy never"):
        CIFAR10(str(tmp_path / "data"), train=True)


class HugeArray:
    def __reduce__(self):
        import numpy as np
        from numpy.core.multiarray import _reconstruct

        return _reconstruct, (np.ndarray, (10**7, 3072), b"B")


def test_cifar10_batches_written_by_python_2_or_3_still_load(tmp_path):
    write_cifar10(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    for name in ("data_batch_1", "test_batch"):  # protocol 2, bytes keys: as the official files load
        batch = pickle.loads((folder / name).read_bytes())
        with open(folder / name, "wb") as f:
            pickle.dump({k.encode(): v for k, v in batch.items()}, f, protocol=2)
    dataset = CIFAR10(str(tmp_path / "data"), train=False)
    assert len(dataset) == 20 and dataset.data.shape == (20, 32, 32, 3) and dataset.classes[0] == "airplane"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": [[1, 2]], "labels": [0]}))
    with pytest.raises(DataError, match="its data is not an N x 3072 array of bytes"):
        CIFAR10(str(tmp_path / "data"), train=False)


# 4. Starting weights from a hub cache


def plant_in_hub(tmp_path, monkeypatch, url, marker):
    """A file in a torch hub cache, where torchvision's builders look for their weights, that runs a command
    when unpickled."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save({"x": RunsAShellCommand(marker)}, cached)
    return cached


def test_a_checkpoints_network_never_fetches_or_reads_starting_weights(trained, tmp_path, monkeypatch):
    from torchvision.models import MobileNet_V3_Large_Weights
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    marker = tmp_path / "pwned"
    plant_in_hub(tmp_path, monkeypatch, MobileNet_V3_Large_Weights.IMAGENET1K_V1.url, marker)
    network = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=10).eval()
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint["state_dict"] = {f"network.{k}": v for k, v in network.state_dict().items()}
    target = "torchvision.models.segmentation.lraspp_mobilenet_v3_large"
    for config in (  # starting weights by default (weights_backbone), and asked for by the old spelling
        {"_target_": target, "num_classes": 10},
        {"_target_": target, "num_classes": 10, "pretrained_backbone": True, "weights": "DEFAULT"},
    ):
        checkpoint[METADATA_KEY]["config"]["network"] = config
        torch.save(checkpoint, tmp_path / "net.ckpt")
        rebuilt = load_network(tmp_path / "net.ckpt")
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(rebuilt(x)["out"], network(x)["out"])
    assert not marker.exists()


def test_every_torchvision_and_timm_argument_for_starting_weights_is_known():
    import inspect

    import timm

    from image_classification.trust import STARTING_WEIGHTS

    named = {p for p in inspect.signature(timm.create_model).parameters if p not in ("model_name", "kwargs")}
    for name in torchvision.models.list_models():
        named |= set(inspect.signature(torchvision.models.get_model_builder(name)).parameters)
    weights = {p for p in named if any(word in p for word in ("weight", "pretrain", "checkpoint", "cache", "url"))}
    assert weights <= STARTING_WEIGHTS
    cleared = without_starting_weights({"_target_": "torchvision.models.segmentation.fcn_resnet50", "num_classes": 2})
    assert cleared == {"_target_": "torchvision.models.segmentation.fcn_resnet50", "num_classes": 2,
                       "weights": None, "weights_backbone": None}  # fmt: skip


def test_a_runs_own_network_reads_hub_weights_as_data(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    marker = tmp_path / "pwned"
    cached = plant_in_hub(tmp_path, monkeypatch, ResNet18_Weights.IMAGENET1K_V1.url, marker)
    with run_config_policy(), pytest.raises(Exception, match="Weights only load failed"):
        torchvision.models.resnet18(weights="IMAGENET1K_V1")  # torchvision asks torch.load for weights_only=False
    assert cached.is_file() and not marker.exists()


# 5. A frozen backbone's file


def test_a_checkpoint_cannot_point_its_frozen_backbone_outside_its_folder(trained, tmp_path):
    marker = tmp_path / "pwned"
    outside = tmp_path / "outside.pt"
    torch.save({"w": torch.zeros(1), "x": RunsAShellCommand(marker)}, outside)
    (tmp_path / "ckpts").mkdir()
    for name in ("../outside.pt", str(outside), "backbone-0123456789abcdef.pt/../../outside.pt"):
        info = {"file": name, "sha256": state_digest({"w": torch.zeros(1)})}
        checkpoint = torch.load(trained, weights_only=True)
        checkpoint[FROZEN_KEY] = info
        torch.save(checkpoint, tmp_path / "ckpts" / "probe.ckpt")
        with pytest.raises(UserError, match=f"names its frozen backbone {name!r}: .* beside it, nowhere else"):
            load_network(tmp_path / "ckpts" / "probe.ckpt")
    assert not marker.exists()


def test_a_checkpoint_of_another_directory_cannot_name_the_checkpoint_a_run_tests(trained, tmp_path):
    """Lightning restores the best checkpoint's path a checkpoint's callbacks had in their own directory: a run
    in another directory never tests or reports that file as its own."""
    other = tmp_path / "other.ckpt"
    other.write_bytes(Path(trained).read_bytes())
    checkpoint = torch.load(trained, weights_only=True)
    for key, state in checkpoint["callbacks"].items():
        if key.startswith("ModelCheckpoint") and "best_model_path" in state:
            state["best_model_path"] = str(other)
    torch.save(checkpoint, tmp_path / "resumed.ckpt")
    with run_config_policy():  # nothing left to train: the run tests what it has, not the file named
        report = trainer.train(compose_config(tmp_path, *QUICK, *RECIPE, f"ckpt_path={tmp_path / 'resumed.ckpt'}"))
    assert str(other) not in json.dumps(report)


def test_evaluate_takes_no_compile_options_from_a_checkpoint(trained, tmp_path):
    """torch.compile's options name programs it runs (Inductor's C++ compiler): evaluate builds the module from
    the settings that change what a test measures, never a checkpoint's compile options."""
    marker = tmp_path / "pwned"
    checkpoint = read_checkpoint(trained)
    config = copy.deepcopy(checkpoint[METADATA_KEY]["config"])
    config["module"]["compile"] = {"backend": "inductor", "options": {"cpp.cxx": f"sh -c 'touch {marker}' #"}}
    evil = tampered(trained, tmp_path / "evil.ckpt", config=config)
    cfg = compose([f"ckpt_path={evil}", f"paths.output_dir={tmp_path / 'eval'}", "logger=none"], "evaluate")
    assert 0 <= evaluate(cfg, [], [])["metrics"]["test/acc"] <= 1
    assert not marker.exists()
    config["module"]["top_k"] = "all"
    cfg = compose([f"ckpt_path={tampered(trained, evil, config=config)}", f"paths.output_dir={tmp_path / 'e2'}"],
                  "evaluate")  # fmt: skip
    with pytest.raises(UserError, match="module.top_k is 'all', not a setting evaluate can use"):
        evaluate(cfg, [], [])


def test_a_checkpoints_callback_state_cannot_make_a_run_remove_files_elsewhere(trained, tmp_path):
    """Lightning removes the checkpoints a ModelCheckpoint's state names when it writes better ones, folders
    included: the paths a checkpoint's callback state names are confined to the checkpoint's own folder, by the
    module (a run without this package's checkpoint plugin too)."""
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "sub" / "data.txt").write_text("keep me")
    checkpoint = torch.load(trained, weights_only=True)
    for state in checkpoint["callbacks"].values():
        if "best_model_path" in state:
            state["best_model_path"] = state["last_model_path"] = str(tmp_path / "run/checkpoints/../../victim")
            state["best_k_models"] = {str(victim): 0.0}
            state["dirpath"] = str(tmp_path / "run" / "checkpoints")  # this run's, as if it were its own
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with run_config_policy():
        trainer.train(
            compose_config(
                tmp_path,
                *QUICK,
                *RECIPE,
                "trainer.max_epochs=3",
                "trainer.plugins=[]",
                f"ckpt_path={tmp_path / 'evil.ckpt'}",
            )
        )
    assert (victim / "sub" / "data.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"class_names": 3}, "class_names is not a list of names"),
        ({"class_names": {"a": 1}}, "class_names is not a list of names"),
        ({"overrides": {"a": 1}}, "overrides is not a list of overrides"),
        ({"val_metrics": ["val/acc"]}, "val_metrics is not a mapping of metrics to numbers"),
        ({"config": {"network": "small_cnn"}}, "config's network is not a mapping"),
        ({"class_names": ["only", "three", "names"]}, "names 3 classes but its network gives 10 scores"),
        ({"eval_batch_transform": [1]}, "data.eval_batch_transform builds a list, not a transform"),
    ],
)
def test_damaged_checkpoint_metadata_is_one_line(trained, tmp_path, damage, message):
    from image_classification import load_model

    metadata = copy.deepcopy(read_checkpoint(trained)[METADATA_KEY])
    if "eval_batch_transform" in damage:
        metadata["config"]["data"]["eval_batch_transform"] = damage.pop("eval_batch_transform")
    metadata.update(damage)
    path = tampered(trained, tmp_path / "damaged.ckpt", **metadata)
    with pytest.raises(UserError, match=re.escape(message)):
        load_model(path).predict(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_a_checkpoints_data_builds_only_torchvision_datasets_that_read_their_files_as_data(trained, tmp_path):
    """torchvision's LSUN unpickles a cache file it finds beside its data: not a dataset a checkpoint may name."""
    config = copy.deepcopy(read_checkpoint(trained)[METADATA_KEY]["config"])
    config["data"]["test_set"] = {"_target_": "torchvision.datasets.LSUN", "_partial_": True, "root": str(tmp_path)}
    evil = tampered(trained, tmp_path / "evil.ckpt", config=config)
    cfg = compose([f"ckpt_path={evil}", f"paths.output_dir={tmp_path / 'eval'}", "logger=none"], "evaluate")
    with pytest.raises(UserError, match="'torchvision.datasets.LSUN', which is not data this package trusts"):
        evaluate(cfg, [], [])


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"epoch": "x"}, "its epoch is not a whole number"),
        (
            {"loops": {"fit_loop": {"epoch_loop.state_dict": {"_batches_that_stepped": "x"}}}},
            "does not count its steps",
        ),
        ({"optimizer_states": ["x"]}, "its optimizer_states is not a list of optimizer states"),
        ({"state_dict": {"network.w": "x"}}, "state_dict of .* is not a mapping of weights"),
        ({"state_dict": {3: torch.zeros(1)}}, "state_dict of .* is not a mapping of weights"),
        ({"callbacks": {"ModelCheckpoint": "x"}}, "its callbacks is not a mapping of states"),
    ],
)
def test_a_damaged_training_state_is_one_line_before_anything_runs(trained, tmp_path, damage, message):
    checkpoint = torch.load(trained, weights_only=True)
    checkpoint.update(damage)
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    cfg = compose_config(tmp_path, *QUICK, *RECIPE, "trainer.max_epochs=2", f"ckpt_path={tmp_path / 'damaged.ckpt'}")
    with run_config_policy(), pytest.raises(UserError, match=message):
        trainer.train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize("command", ["trainer.train", "image_classification.evaluate.evaluate"])
def test_the_commands_that_build_a_runs_own_config_run_under_its_policy(monkeypatch, command):
    """train and evaluate instantiate the user's own config unrestricted, and read every file with torch.load as
    data (the evaluate command had lost its decorator to a function inserted above it)."""
    import importlib
    import os

    module_name, function = command.rsplit(".", 1)
    module = importlib.import_module(module_name)
    seen = {}

    def stop(*args, **kwargs):
        seen["weights_only"] = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        raise UserError("stop here")

    monkeypatch.setattr(module, "quiet_library_noise", stop)
    with pytest.raises(UserError, match="stop here"):
        getattr(module, function)(None)
    assert seen == {"weights_only": "1"}
