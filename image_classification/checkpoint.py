"""Self-describing checkpoints: the resolved config, class names, git commit and library versions travel
inside every checkpoint, so ``load_network(path)`` rebuilds the trained network from the file alone."""

import datetime
import importlib.metadata
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import execution_whitelist
from torch import nn

from image_classification.errors import UserError

METADATA_KEY = "image_classification"
FORMAT_VERSION = 1
# Targets a checkpoint's embedded config may instantiate without the caller vouching for more: a
# checkpoint can come from anywhere, and its config must not run arbitrary code.
TRUSTED_NETWORK_TARGETS = ("image_classification.*", "torch.nn.*", "torchvision.models.*", "timm.*")


def git_commit() -> str | None:
    """The commit of the code that is running, with ``-dirty`` if it has uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        run = dict(cwd=here, capture_output=True, text=True, timeout=10, check=True)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_metadata(config: dict[str, Any], class_names: Sequence[str] | None) -> dict[str, Any]:
    """What a checkpoint carries besides weights; plain types only, so ``weights_only=True`` loads it."""
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "class_names": list(class_names) if class_names is not None else None,
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            **{p: _version(p) for p in ("image_classification", "torch", "torchvision", "lightning", "timm")},
        },
    }


class RunMetadata(L.Callback):
    """Writes :func:`run_metadata` into every checkpoint the run saves."""

    def __init__(self, metadata: dict[str, Any]):
        self.metadata = metadata

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[METADATA_KEY] = self.metadata


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True``; fails clearly if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated file, or unsafe pickled objects
        raise UserError(f"checkpoint {path} cannot be read safely: {err}") from err
    if METADATA_KEY not in checkpoint:
        raise UserError(f"{path} carries no {METADATA_KEY!r} metadata: it was not written by this framework")
    return checkpoint


def load_network(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    trusted_targets: Sequence[str] = (),
) -> nn.Module:
    """Rebuild the trained network from a checkpoint file alone, in eval mode, ready for inference.

    Args:
        trusted_targets: more ``_target_`` patterns (``"my_package.*"``) the checkpoint's network config may
            instantiate, beyond this package, ``torch.nn``, ``torchvision.models`` and ``timm``.

    The network's class names are in ``read_checkpoint(path)["image_classification"]["class_names"]``.
    """
    checkpoint = read_checkpoint(path, map_location)
    network_config = checkpoint[METADATA_KEY]["config"]["network"]
    with execution_whitelist(TRUSTED_NETWORK_TARGETS + tuple(trusted_targets), reset=True):
        network = hydra.utils.instantiate(network_config)
    prefix = "network."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    network.load_state_dict(state, strict=True)
    return network.to(map_location).eval()
