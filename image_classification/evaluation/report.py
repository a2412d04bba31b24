"""The JSON report of an evaluation: the score with a bootstrap confidence interval, per-split and per-class
scores, every test image's prediction, and where and how it was measured."""

import datetime
import platform
import shlex
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from image_classification.networks.weights import weights_digest

REPORT_VERSION = 1


def bootstrap_interval(correct: Sequence[bool], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The 95% bootstrap (percentile) confidence interval of the accuracy of ``correct``."""
    correct = np.asarray(correct, dtype=np.float64)
    if len(correct) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(resamples, len(correct)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def device_name() -> str:
    """The GPU's name, or the CPU's."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def strategy_of(config: dict[str, Any]) -> str:
    """How the classifier was fitted: ``logistic`` / ``knn`` (closed form), ``cached`` (head trained on cached
    features), ``end_to_end`` (a frozen backbone in every step), ``trained`` (the whole network)."""
    fit = (config.get("fit") or {}).get("_target_", "")
    if fit.endswith("LogisticRegression"):
        return "logistic"
    if fit.endswith("NearestNeighbours"):
        return "knn"
    if (config.get("data") or {}).get("features"):
        return "cached"
    return "end_to_end" if "backbone" in (config.get("network") or {}) else "trained"


def backbone_description(config: dict[str, Any], network: torch.nn.Module) -> dict[str, Any]:
    """What was evaluated: the backbone's config (architecture, weights file, precision) and a digest of its
    weights; the whole network's for a network trained end to end."""
    network_config = dict(config.get("network") or {})
    backbone = getattr(network, "backbone", None)
    described = network_config.get("backbone", network_config) if backbone is not None else network_config
    inner = described.get("network", described)
    architecture = inner.get("model_name") or inner.get("_target_", "?").rsplit(".", 1)[-1]
    weights = described.get("checkpoint") or inner.get("checkpoint")
    # a frozen backbone is what its file holds, or its initial weights; a network trained here, what it learnt
    started = Path(str(weights)).name if weights else "as initialized"
    if backbone is None:
        started = f"trained from {started}" if weights else "trained"
    return {
        "name": f"{architecture} ({started})",
        "config": described,
        "weights_sha256": backbone.weights_digest() if backbone is not None else weights_digest(network),
    }


def build_report(
    *,
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    example_ids: Sequence[Any],
    config: dict[str, Any],
    network: torch.nn.Module,
    split_metrics: dict[str, dict[str, float]],
    metadata: dict[str, Any],
    tested_checkpoint: str | None,
    unreadable: Sequence[str] = (),
) -> dict[str, Any]:
    """The report of a test: see the module's docstring. ``unreadable``: the test images skipped as unreadable
    (they have no prediction)."""
    probabilities = logits.float().softmax(dim=1)
    score, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).numpy()
    per_class = {}
    for index, name in enumerate(class_names):
        mask = (labels == index).numpy()
        if mask.any():
            per_class[str(name)] = {"acc": float(correct[mask].mean()), "n": int(mask.sum())}
    low, high = bootstrap_interval(correct)
    return {
        "report_version": REPORT_VERSION,
        "benchmark": config.get("task_name"),
        "dataset": ((config.get("data") or {}).get("train_set") or {}).get("_target_"),
        "strategy": strategy_of(config),
        "score": {"top1": float(correct.mean()), "ci95": [low, high], "n": int(len(correct))},
        "splits": split_metrics,
        "per_class": per_class,
        "backbone": backbone_description(config, network),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "overrides": metadata.get("overrides"),
        "git_commit": metadata.get("git_commit"),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "device": device_name(),
        "versions": metadata.get("versions"),
        "tested_checkpoint": tested_checkpoint,
        "unreadable": list(unreadable),
        "examples": [
            {"id": example_id, "label": class_names[t], "predicted": class_names[p], "score": round(float(s), 6)}
            for example_id, t, p, s in zip(example_ids, labels.tolist(), predicted.tolist(), score, strict=True)
        ],
    }
