"""The README's examples run as written. A fenced block right after a `<!-- readme-test: name -->` line is
one of them; each test runs it in a fresh folder that holds trainer.py and configs/, with .venv's python."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\n```(\w+)\n(.*?)```", re.DOTALL)


def readme_blocks() -> dict[str, str]:
    return {name: code for name, _, code in BLOCK.findall((ROOT / "README.md").read_text())}


def workspace(tmp_path: Path) -> dict[str, str]:
    """A folder like a checkout: trainer.py and configs/ linked in, `python` the one running the tests."""
    for name in ("trainer.py", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    return env


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_marked_blocks_exist():
    assert {
        "my-network",
        "my-network-run",
        "load-network",
        "jigsaw-then-classify",
        "linear-eval",
        "use-a-model",
        "load-model",
    } <= readme_blocks().keys()


@pytest.mark.slow
def test_your_own_network_as_the_readme_shows_it(tmp_path):
    blocks = readme_blocks()
    env = workspace(tmp_path)
    (tmp_path / "my_lab").mkdir()
    (tmp_path / "my_lab" / "nets.py").write_text(blocks["my-network"])
    run(["bash", "-euo", "pipefail", "-c", blocks["my-network-run"]], tmp_path, env)
    config = next(tmp_path.glob("logs/train/runs/*/config.yaml")).read_text()
    assert "_target_: my_lab.nets.WideNet" in config and "width: 128" in config


@pytest.mark.slow
def test_load_network_as_the_readme_shows_it(tmp_path):
    env = workspace(tmp_path)
    run([sys.executable, "trainer.py", "trainer.max_epochs=3"], tmp_path, env)
    printed = run([sys.executable, "-c", readme_blocks()["load-network"]], tmp_path, env).stdout
    predicted, true = re.search(r"predicted: (\[.*\]) true: (\[.*\])", printed).groups()
    assert sum(p == t for p, t in zip(ast.literal_eval(predicted), map(str, ast.literal_eval(true)), strict=True)) >= 6


@pytest.mark.slow
def test_jigsaw_pretraining_then_a_classifier_from_its_trunk_as_the_readme_shows_it(tmp_path):
    env = workspace(tmp_path)
    printed = run(["bash", "-euo", "pipefail", "-c", readme_blocks()["jigsaw-then-classify"]], tmp_path, env).stdout
    extractor = tmp_path / "logs" / "jigsaw" / "demo" / "checkpoints" / "feature_extractor.pt"
    assert extractor.is_file()
    config = next(tmp_path.glob("logs/train/runs/*/config.yaml")).read_text()
    assert f"checkpoint: {extractor.relative_to(tmp_path)}" in config
    accuracies = [float(a) for a in re.findall(r"Test accuracy: +([\d.]+)%", printed)]
    assert len(accuracies) == 2 and accuracies[0] > 50 and accuracies[1] > 95, accuracies


@pytest.mark.slow
def test_linear_evaluation_as_the_readme_shows_it(tmp_path):
    env = workspace(tmp_path)
    result = run(["bash", "-euo", "pipefail", "-c", readme_blocks()["linear-eval"]], tmp_path, env)
    printed = result.stdout + result.stderr
    # the second run's backbone is the first's (the same seed): it reads the features the first one cached
    assert printed.count("features: read from cache/features/") == 3, printed[-3000:]
    rows = re.findall(r"^linear-eval +(\w+) +JigsawCNN \(as initialized\) +([\d.]+) ", result.stdout, re.MULTILINE)
    assert sorted(strategy for strategy, _ in rows) == ["cached", "logistic"], result.stdout
    assert all(float(top1) > 90 for _, top1 in rows), rows


@pytest.mark.slow
def test_using_a_trained_model_as_the_readme_shows_it(tmp_path):
    blocks = readme_blocks()
    env = workspace(tmp_path)
    run(["bash", "-euo", "pipefail", "-c", blocks["use-a-model"]], tmp_path, env)
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert len(rows) == 21 and rows[0].startswith("path,class_1,probability_1")
    # the files are named <index>_<true class>.png
    right = sum(row.split(",")[1] == row.split(",")[0].rsplit("_", 1)[1][0] for row in rows[1:])
    assert right >= 18, rows
    evaluated = json.loads(next(tmp_path.glob("logs/eval/runs/*/metrics.json")).read_text())
    assert evaluated["metrics"]["test/acc"] > 0.95 and evaluated["checkpoint"].endswith("last.ckpt")
    assert (tmp_path / "logs/train/demo/checkpoints/last.onnx").is_file()
    assert (tmp_path / "logs/train/demo/checkpoints/last.onnx.json").is_file()
    printed = run([sys.executable, "-c", blocks["load-model"]], tmp_path, env).stdout
    predicted = ast.literal_eval(printed.strip().splitlines()[-1])
    assert predicted == [row.split(",")[1] for row in rows[1:]]
