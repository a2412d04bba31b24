"""Using a trained model: load_model's predictions are the test step's, the predict, evaluate and export
commands, and a stranger's checkpoint cannot run code through its preprocessing or data config."""

import copy
import csv
import importlib.util
import json
import shutil

import PIL.Image
import pytest
import torch
from conftest import write_image_folder
from omegaconf import OmegaConf

import trainer
from image_classification import load_model
from image_classification.checkpoint import METADATA_KEY
from image_classification.config import compose
from image_classification.data import Digits
from image_classification.errors import UserError
from image_classification.evaluate import evaluate, split_data_overrides
from image_classification.export import export, run_exported
from image_classification.predict import predict

QUICK = ["trainer.max_epochs=2", "logger=none", "callbacks.report=null"]
# Per image: resize, crop, uint8 tensor; per batch, on the device: float, normalize. Both halves must be
# applied for the logits to match.
SPLIT_PREPROCESSING = {
    "eval_transform": {
        "_target_": "torchvision.transforms.v2.Compose",
        "transforms": [
            {"_target_": "torchvision.transforms.v2.Resize", "size": 18, "antialias": True},
            {"_target_": "torchvision.transforms.v2.CenterCrop", "size": 16},
            {"_target_": "torchvision.transforms.v2.ToImage"},
        ],
    },
    "eval_batch_transform": {
        "_target_": "torchvision.transforms.v2.Compose",
        "transforms": [
            {
                "_target_": "torchvision.transforms.v2.ToDtype",
                "dtype": {"_target_": "hydra.utils.get_object", "path": "torch.float32"},
                "scale": True,
            },
            {"_target_": "torchvision.transforms.v2.Normalize", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
        ],
    },
}


def hydra_value(value) -> str:
    """``value`` in Hydra's override syntax."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def train_with_logits(cfg, tmp_path, overrides=None):
    """Train ``cfg`` (composed from ``overrides``) and return its report and the test step's logits."""
    OmegaConf.update(
        cfg,
        "callbacks.test_logits",
        {"_target_": "tests.helpers.SaveTestLogits", "path": str(tmp_path / "logits.pt")},
        force_add=True,
    )
    report = trainer.train(cfg, overrides)
    return report, torch.load(tmp_path / "logits.pt", weights_only=True)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run on a folder of real photographs (JPEG and PNG) whose preprocessing is split between per-image and
    per-batch transforms: its checkpoint and the test step's logits."""
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("folder_run")
    root = write_image_folder(tmp / "photos")
    overrides = [
        "data=image_folder",
        f"data.root={root}",
        "data.image_size=16",
        "data.num_workers=0",
        *QUICK,
        *[f"data.{key}={hydra_value(value)}" for key, value in SPLIT_PREPROCESSING.items()],
        f"data.train_transform={hydra_value(SPLIT_PREPROCESSING['eval_transform'])}",
        f"data.train_batch_transform={hydra_value(SPLIT_PREPROCESSING['eval_batch_transform'])}",
    ]
    report, logits = train_with_logits(compose_config(tmp, *overrides), tmp, overrides)
    return {"root": root, "report": report, "logits": logits, "tmp": tmp}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A run of the embedded default (uint8 tensors, all preprocessing per batch)."""
    from conftest import compose_config

    tmp = tmp_path_factory.mktemp("digits_run")
    report, logits = train_with_logits(compose_config(tmp, *QUICK), tmp, QUICK)
    return {"report": report, "logits": logits, "tmp": tmp}


def test_load_model_gives_the_test_steps_logits_for_image_files(folder_run):
    model = load_model(folder_run["report"]["tested_checkpoint"])
    saved = folder_run["logits"]
    images = [PIL.Image.open(path) for path in saved["ids"]]
    assert len(images) == 18 and {path.rsplit(".", 1)[1] for path in saved["ids"]} == {"jpg", "png"}
    torch.testing.assert_close(model.predict(images), saved["logits"], atol=1e-5, rtol=0)
    assert model.class_names == ["astronaut", "cat", "coffee"]
    # without the per-batch half (normalization), the logits are not the test step's
    assert not torch.allclose(
        model.network(torch.stack([model.preprocess.image(i) for i in images]).float()), saved["logits"], atol=1e-2
    )


def test_load_model_gives_the_test_steps_logits_for_the_digits(digits_run):
    model = load_model(digits_run["report"]["tested_checkpoint"])
    saved = digits_run["logits"]
    images = Digits().images[saved["ids"]]  # uint8 tensors, as the dataset gives them
    torch.testing.assert_close(model.predict(images), saved["logits"], atol=1e-5, rtol=0)


def predict_config(tmp_path, *overrides):
    return compose([f"out={tmp_path / 'out' / 'predictions.csv'}", "num_workers=0", *overrides], "predict")


def test_predict_classifies_a_folder_and_lists_the_files_it_cannot_read(folder_run, tmp_path):
    test = tmp_path / "test"
    shutil.copytree(folder_run["root"] / "test", test)
    (test / "cat" / "empty.jpg").write_bytes(b"")
    (test / "cat" / "notes.jpg").write_text("not an image")
    good = (test / "coffee" / "0.png").read_bytes()
    (test / "coffee" / "truncated.png").write_bytes(good[: len(good) // 2])
    (test / "readme.txt").write_text("not an image file name: ignored")
    cfg = predict_config(tmp_path, f"ckpt={folder_run['report']['tested_checkpoint']}", f"input={test}", "top_k=2")
    result = predict(cfg)

    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 18
    assert list(rows[0]) == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    with open(tmp_path / "out" / "predictions.unreadable.csv", newline="") as f:
        unreadable = {row["path"].rsplit("/", 1)[1]: row["reason"] for row in csv.DictReader(f)}
    assert set(unreadable) == {"empty.jpg", "notes.jpg", "truncated.png"}
    assert all(reason for reason in unreadable.values())

    # the same images as the test step, relocated: the same top class, the same probability
    saved = folder_run["logits"]
    probabilities = saved["logits"].softmax(dim=1)
    by_name = {"/".join(p.split("/")[-2:]): i for i, p in enumerate(saved["ids"])}
    for row in rows:
        i = by_name["/".join(row["path"].split("/")[-2:])]
        assert row["class_1"] == ["astronaut", "cat", "coffee"][probabilities[i].argmax()]
        assert abs(float(row["probability_1"]) - probabilities[i].max().item()) < 1e-5
    assert len(result["predictions"]) == 18


def test_predict_writes_json_for_one_image_or_a_glob(folder_run, tmp_path):
    ckpt = f"ckpt={folder_run['report']['tested_checkpoint']}"
    one = folder_run["root"] / "test" / "cat" / "0.png"
    predict(predict_config(tmp_path, ckpt, f"input={one}", "format=json", f"out={tmp_path / 'one.json'}"))
    document = json.loads((tmp_path / "one.json").read_text())
    assert [p["path"] for p in document["predictions"]] == [str(one)]
    assert len(document["predictions"][0]["top_k"]) == 3  # top_k=5 of 3 classes
    assert sum(t["probability"] for t in document["predictions"][0]["top_k"]) == pytest.approx(1, abs=1e-5)
    pattern = str(folder_run["root"] / "test" / "*" / "*.jpg")
    result = predict(predict_config(tmp_path, ckpt, f"input='{pattern}'", "format=json"))
    assert len(result["predictions"]) == 9 and result["unreadable"] == []
    with pytest.raises(UserError, match="names no image"):
        predict(predict_config(tmp_path, ckpt, f"input={tmp_path / 'nothing'}"))


def test_predict_as_a_command(folder_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "p.csv"
    args = [f"ckpt={folder_run['report']['tested_checkpoint']}", f"input={folder_run['root'] / 'test'}", f"out={out}"]
    run = subprocess.run([sys.executable, "-m", "image_classification.predict", *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert len(out.read_text().splitlines()) == 19
    printed = (run.stdout + run.stderr).splitlines()  # one line, no empty one before it (a progress bar's)
    assert printed == [f"18 images classified, 0 unreadable: {out}"], printed
    run = subprocess.run(
        [sys.executable, "-m", "image_classification.predict", "input=x.png", "topk=3"], capture_output=True, text=True
    )
    assert run.returncode == 1 and run.stderr.strip().count("\n") == 0, run.stderr
    assert "topk" in run.stderr


def evaluate_config(tmp_path, *overrides):
    composed, data_overrides = split_data_overrides(list(overrides))
    logger = [] if any(o.startswith("logger=") for o in overrides) else ["logger=csv"]
    cfg = compose([f"paths.output_dir={tmp_path / 'eval'}", *logger, "print_config=false", *composed], "evaluate")
    return cfg, data_overrides


def test_evaluate_reproduces_the_runs_test_metrics(digits_run, tmp_path):
    report = digits_run["report"]
    cfg, data = evaluate_config(tmp_path, f"ckpt_path={report['tested_checkpoint']}", "logger=tensorboard")
    evaluated = evaluate(cfg, [], data)
    for name in ("test/acc", "test/loss", "test/nll", "test/acc_class/3"):
        assert evaluated["metrics"][name] == pytest.approx(report["metrics"][name], abs=1e-6), name
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"] == evaluated["metrics"]
    assert (tmp_path / "eval" / "report.json").is_file() and (tmp_path / "eval" / "config.yaml").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "eval" / "tensorboard")).Reload()
    (logged,) = events.Scalars("test/acc")
    assert logged.value == pytest.approx(report["metrics"]["test/acc"], abs=1e-6)


def test_evaluate_on_another_folder_and_on_a_configured_dataset(folder_run, tmp_path):
    ckpt = folder_run["report"]["tested_checkpoint"]
    other = tmp_path / "other"
    shutil.copytree(folder_run["root"], other)
    shutil.rmtree(other / "test" / "coffee")
    (other / "test" / "coffee").mkdir()
    for name in ("0.png", "1.jpg"):  # only two coffee images are left in the test split
        shutil.copy(folder_run["root"] / "test" / "coffee" / name, other / "test" / "coffee" / name)
    # the checkpoint's own data config, its root changed
    cfg, data = evaluate_config(tmp_path, f"ckpt_path={ckpt}", f"data.root={other}", "data.num_workers=0")
    assert data == [f"data.root={other}", "data.num_workers=0"]
    metrics = evaluate(cfg, [], data)["metrics"]
    assert metrics["test/acc_class/astronaut"] == pytest.approx(
        folder_run["report"]["metrics"]["test/acc_class/astronaut"]
    )
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert len(report["examples"]) == 14
    # a dataset configured here (its own eval transforms: the network sees other inputs, but it runs)
    cfg, data = evaluate_config(
        tmp_path,
        f"ckpt_path={ckpt}",
        "data=image_folder",
        f"data.root={other}",
        "data.image_size=16",
        "data.num_workers=0",
    )
    assert data is None
    assert 0 <= evaluate(cfg, [], data)["metrics"]["test/acc"] <= 1
    # classes that are not the checkpoint's: one more, or the same number under other names
    for split in ("train", "val", "test"):
        (other / split / "dog").mkdir()
        shutil.copy(folder_run["root"] / "test" / "cat" / "0.png", other / split / "dog" / "0.png")
    cfg, data = evaluate_config(tmp_path, f"ckpt_path={ckpt}", f"data.root={other}")
    with pytest.raises(UserError, match="classifies 3 classes but the data has 4"):
        evaluate(cfg, [], data)
    for split in ("train", "val", "test"):
        shutil.rmtree(other / split / "dog")
        (other / split / "astronaut").rename(other / split / "zebra")
    with pytest.raises(UserError, match="class 0 is 'cat' in the data but 'astronaut' in the checkpoint"):
        evaluate(cfg, [], data)
    with pytest.raises(UserError, match="not a key of the checkpoint's data config"):
        evaluate(*evaluate_config(tmp_path, f"ckpt_path={ckpt}", "data.rooot=x")[:1], [], ["data.rooot=x"])


@pytest.mark.parametrize("format", ["onnx", "pt2", "torchscript"])
def test_an_exported_model_gives_the_networks_logits(folder_run, tmp_path, format):
    if format == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (pip install -e '.[export]')")
    ckpt = folder_run["report"]["tested_checkpoint"]
    out = tmp_path / f"model.{format}"
    cfg = compose([f"ckpt={ckpt}", f"format={format}", f"out={out}"], "export")
    description = export(cfg)
    model = load_model(ckpt)
    images = [PIL.Image.open(p) for p in folder_run["logits"]["ids"]]
    batch = model.preprocess(images)  # the 18 test images: another batch size than the export's
    exported = run_exported(out, format, batch)
    torch.testing.assert_close(exported.float(), folder_run["logits"]["logits"], atol=1e-4, rtol=0)
    beside = json.loads((tmp_path / f"model.{format}.json").read_text())
    assert beside == json.loads(json.dumps(description))
    assert beside["class_names"] == ["astronaut", "cat", "coffee"]
    preprocessing = beside["preprocessing"]
    assert preprocessing["mean"] == [0.4, 0.5, 0.6] and preprocessing["std"] == [0.2, 0.25, 0.3]
    assert preprocessing["resize"] == 18 and preprocessing["crop"] == 16
    assert preprocessing["input"]["shape"] == ["batch", 3, 16, 16]


def tampered(path, tmp_path, key, config):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint = copy.deepcopy(checkpoint)
    node = checkpoint[METADATA_KEY]["config"]
    *parents, leaf = key.split(".")
    for parent in parents:
        node = node[parent]
    node[leaf] = config
    out = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, out)
    return out


def payloads(marker):
    shell = {"_target_": "os.system", "command": f"touch {marker}"}
    compose_with = lambda *transforms: {"_target_": "torchvision.transforms.v2.Compose", "transforms": list(transforms)}  # noqa: E731
    return {
        "os.system": shell,
        "v2.Lambda": compose_with(
            {
                "_target_": "torchvision.transforms.v2.Lambda",
                "lambd": {"_target_": "hydra.utils.get_object", "path": "os.system"},
            }
        ),
        "a located callable": compose_with({"_target_": "hydra.utils.get_object", "path": "os.system"}),
        "a located dtype that is not one": compose_with(
            {
                "_target_": "torchvision.transforms.v2.ToDtype",
                "dtype": {"_target_": "hydra.utils.get_object", "path": "torch.load"},
            }
        ),
        "nested in a transform": compose_with(shell),
        "alias through torchvision": {
            "_target_": "torchvision.transforms.v2._utils.os.system",
            "command": f"touch {marker}",
        },
        "hydra instantiate": {"_target_": "hydra.utils.instantiate", "config": shell},
    }


@pytest.mark.parametrize("name", list(payloads("m")))
@pytest.mark.parametrize("key", ["data.eval_transform", "data.eval_batch_transform"])
def test_a_checkpoint_cannot_run_code_through_its_preprocessing(digits_run, tmp_path, key, name):
    marker = tmp_path / "pwned"
    path = tampered(digits_run["report"]["tested_checkpoint"], tmp_path, key, payloads(marker)[name])
    with pytest.raises(UserError, match="trusted_targets|could not be rebuilt"):
        load_model(path)
    cfg, data = evaluate_config(tmp_path, f"ckpt_path={path}")
    with pytest.raises(UserError, match="trusted_targets|could not be rebuilt"):
        evaluate(cfg, [], data)
    assert not marker.exists()


def test_a_checkpoint_cannot_run_code_through_its_dataset_or_loss(digits_run, tmp_path):
    marker = tmp_path / "pwned"
    shell = {"_target_": "os.system", "_partial_": True, "command": f"touch {marker}"}
    for key in ("data.train_set", "loss", "data"):
        path = tampered(digits_run["report"]["tested_checkpoint"], tmp_path, key, shell)
        cfg, data = evaluate_config(tmp_path, f"ckpt_path={path}")
        with pytest.raises(UserError, match="trusted_targets"):
            evaluate(cfg, [], data)
    assert not marker.exists()


def test_the_commands_say_what_is_wrong_in_one_line(folder_run, tmp_path, monkeypatch):
    from image_classification import evaluate as evaluate_command
    from image_classification import export as export_command
    from image_classification import predict as predict_command

    monkeypatch.chdir(tmp_path)
    ckpt = folder_run["report"]["tested_checkpoint"]
    for command, argv, message in [
        (predict_command, ["input=x.png"], "ckpt is required: add ckpt=... to the command line"),
        (predict_command, [f"ckpt={ckpt}", "input=x.png", "format=xml"], "format=xml is not one of csv, json"),
        (predict_command, [f"ckpt={tmp_path / 'none.ckpt'}", f"input={folder_run['root']}"], "does not exist"),
        (evaluate_command, [], "ckpt_path is required"),
        (evaluate_command, [f"ckpt_path={tmp_path / 'none.ckpt'}"], "does not exist"),
        (evaluate_command, [f"ckpt_path={ckpt}", "data.rooot=x"], "data.rooot is not a key"),
        (export_command, [f"ckpt={ckpt}", "format=tflite"], "format=tflite is not one of onnx, pt2, torchscript"),
    ]:
        with pytest.raises(SystemExit) as exit:
            command.main(argv)
        assert str(exit.value).startswith("Error: ") and message in str(exit.value), exit.value
        assert "\n" not in str(exit.value)
    assert list(tmp_path.iterdir()) == []  # nothing written: no run directory, no output


def test_onnx_export_without_its_packages_names_the_extra(folder_run, tmp_path, monkeypatch):
    from image_classification import export as export_command

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    cfg = compose([f"ckpt={folder_run['report']['tested_checkpoint']}", f"out={tmp_path / 'm.onnx'}"], "export")
    with pytest.raises(UserError, match=r"format=onnx needs onnxscript: pip install -e '\.\[export\]'"):
        export_command.export(cfg)
    assert not (tmp_path / "m.onnx").exists()


def test_a_transform_of_your_own_is_built_when_you_vouch_for_it(digits_run, tmp_path):
    compose_with = {"_target_": "torchvision.transforms.v2.Compose", "transforms": []}
    batch = copy.deepcopy(compose_with)
    path = digits_run["report"]["tested_checkpoint"]
    stored = torch.load(path, weights_only=True)[METADATA_KEY]["config"]["data"]["eval_batch_transform"]
    batch["transforms"] = [*stored["transforms"], {"_target_": "tests.helpers.Brighten", "amount": 0.5}]
    path = tampered(path, tmp_path, "data.eval_batch_transform", batch)
    with pytest.raises(
        UserError, match=r"data.eval_batch_transform.transforms\[3\] is built by 'tests.helpers.Brighten'"
    ):
        load_model(path)
    model = load_model(path, trusted_targets=["tests.helpers.*"])
    images = Digits().images[digits_run["logits"]["ids"]]
    expected = model.network(model.preprocess.batch(images))
    assert torch.equal(model.predict(images), expected.detach())
    assert not torch.allclose(model.predict(images), digits_run["logits"]["logits"], atol=1e-3)  # it did brighten


def test_a_jigsaw_checkpoint_is_evaluated_with_its_puzzles_once_vouched_for(tmp_path):
    from conftest import compose_config

    overrides = ["experiment=jigsaw", "trainer.max_epochs=1", "trainer.limit_train_batches=2", *QUICK[1:]]
    report = trainer.train(compose_config(tmp_path, *overrides), overrides)
    ckpt = f"ckpt_path={report['tested_checkpoint']}"
    cfg, data = evaluate_config(tmp_path, ckpt)
    with pytest.raises(UserError, match=r"pass trusted_targets=\['image_classification.data.Jigsaw'\]"):
        evaluate(cfg, [], data)
    # an exact name that is re-exported (image_classification.data.jigsaw.Jigsaw): what it resolves to is vouched too
    cfg, data = evaluate_config(tmp_path, ckpt, "trusted_targets=[image_classification.data.Jigsaw]")
    evaluated = evaluate(cfg, [], data)["metrics"]
    assert evaluated["test/acc"] == pytest.approx(report["metrics"]["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(report["metrics"]["test/loss"], abs=1e-5)
    # the local data config builds it without vouching
    cfg, data = evaluate_config(tmp_path, ckpt, "data=jigsaw")
    assert evaluate(cfg, [], data)["metrics"]["test/acc"] == pytest.approx(report["metrics"]["test/acc"], abs=1e-6)


def test_a_probe_on_its_backbones_own_preprocessing_is_used_and_evaluated_through_it(tmp_path):
    """``data.features.transform=backbone``: the probe learnt on a timm backbone's preprocessing, so load_model,
    predict and evaluate preprocess with it too (PIL images or uint8 tensors alike), and evaluate gives the
    run's own test scores."""
    from conftest import compose_config

    from image_classification.evaluation import clear_memory

    clear_memory()
    root = write_image_folder(tmp_path / "photos")
    overrides = ["experiment=linear-eval", "data=image_folder", f"data.root={root}", "data.num_workers=0",
                 "network@network.backbone.network=resnet18", "data.features.transform=backbone",
                 "trainer.max_epochs=3", "logger=none"]  # fmt: skip
    report, logits = train_with_logits(compose_config(tmp_path, *overrides), tmp_path, overrides)
    ckpt = report["tested_checkpoint"]
    cfg, data = evaluate_config(tmp_path, f"ckpt_path={ckpt}", "logger=none")
    evaluated = evaluate(cfg, [], data)["metrics"]
    for name in ("test/loss", "test/acc", "test/nll"):
        assert evaluated[name] == pytest.approx(report["metrics"][name], abs=1e-5), name
    model = load_model(ckpt)
    files = [root / "test" / name.split("/")[-2] / name.split("/")[-1] for name in logits["ids"]]
    torch.testing.assert_close(model.predict([PIL.Image.open(f) for f in files]), logits["logits"], atol=1e-4, rtol=0)
    from image_classification.data.images import read_image

    torch.testing.assert_close(model.predict([read_image(f) for f in files]), logits["logits"], atol=1e-4, rtol=0)
    result = predict(predict_config(tmp_path, f"ckpt={ckpt}", f"input={root / 'test'}"))
    assert len(result["predictions"]) == 18 and result["unreadable"] == []


def test_evaluate_on_every_image_of_a_folder_in_one_key_and_says_how_many(folder_run, tmp_path, caplog):
    # data.root=<a folder> tested only the 10% the checkpoint's data config holds out of a folder without test/
    ckpt = folder_run["report"]["tested_checkpoint"]
    flat = write_image_folder(tmp_path / "flat", splits=(), per_class=5)  # 3 classes, 15 images
    cfg, data = evaluate_config(tmp_path, f"ckpt_path={ckpt}", f"data.root={flat}", "data.num_workers=0")
    with caplog.at_level("INFO"):
        evaluate(cfg, [], data)
    assert (
        "Tested:          2 images, the 0.1 of the data held out as its test split (data.test_fraction=1" in caplog.text
    )
    cfg, data = evaluate_config(
        tmp_path, f"ckpt_path={ckpt}", f"data.root={flat}", "data.num_workers=0", "data.test_fraction=1"
    )
    caplog.clear()
    with caplog.at_level("INFO"):
        evaluate(cfg, [], data)
    assert "Tested:          15 images, every image of the data (data.test_fraction=1)" in caplog.text
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert sorted(example["id"] for example in report["examples"]) == sorted(str(path) for path in flat.rglob("*.*"))


def test_test_fraction_1_is_refused_for_training(make_config, tmp_path):
    import trainer

    root = write_image_folder(tmp_path / "flat", splits=())
    with pytest.raises(UserError, match="data.test_fraction=1 tests every image and leaves none to train on"):
        trainer.train(make_config("data=image_folder", f"data.root={root}", "data.test_fraction=1"))
