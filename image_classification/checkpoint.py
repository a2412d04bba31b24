"""Self-describing checkpoints: the resolved config, the overrides that composed it, class names, validation
metrics, git commit and library versions travel inside every checkpoint, so ``load_network(path)`` rebuilds
the trained network from the file alone, and a resumed run recomposes the config that ran."""

import datetime
import importlib.metadata
import pickle
import platform
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from image_classification.errors import UserError
from image_classification.files import atomic_path, remove_stale_temporaries
from image_classification.networks.weights import state_digest
from image_classification.trust import build_trusted, network_allow_list, weights_only_loading, without_starting_weights

METADATA_KEY = "image_classification"
FORMAT_VERSION = 1
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
FROZEN_KEY = "frozen_backbone"
FROZEN_PREFIX = "network.backbone."
# The one name a checkpoint's frozen backbone file has, beside it: what move_frozen_backbone writes
FROZEN_FILE = re.compile(r"backbone-[0-9a-f]{16}\.pt")


def move_frozen_backbone(checkpoint: dict[str, Any], digest: str, directory: str | Path) -> None:
    """Keep a frozen backbone's weights (``network.backbone.*``) out of a checkpoint: they are written once, to
    ``backbone-<digest>.pt`` in the checkpoint's directory, and the checkpoint names that file and its digest.
    A linear evaluation then writes its head's checkpoints every epoch, not the same backbone again each time."""
    state = checkpoint["state_dict"]
    frozen = {k[len(FROZEN_PREFIX) :]: state.pop(k) for k in [k for k in state if k.startswith(FROZEN_PREFIX)]}
    path = Path(directory) / f"backbone-{digest[:16]}.pt"
    if not path.is_file():
        with atomic_path(path) as tmp:
            torch.save(frozen, tmp)
    checkpoint[FROZEN_KEY] = {"file": path.name, "sha256": digest}


def restore_frozen_backbone(checkpoint: dict[str, Any], backbone: nn.Module) -> None:
    """Put a frozen backbone's weights back into a checkpoint that left them out, from ``backbone`` (the run's
    own, built from the same config): its digest must be the one the checkpoint names."""
    saved = checkpoint[FROZEN_KEY]["sha256"]
    if backbone.weights_digest() != saved:
        raise UserError(
            f"the checkpoint's frozen backbone (weights {saved[:16]}) is not this run's backbone: the backbone's "
            "weights file changed since the checkpoint was written"
        )
    checkpoint["state_dict"].update({FROZEN_PREFIX + k: v for k, v in backbone.state_dict().items()})


def read_frozen_backbone(checkpoint: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The frozen backbone weights a checkpoint at ``path`` keeps beside it (``network.backbone.*`` keys)."""
    info = checkpoint[FROZEN_KEY]
    name, digest = (info.get("file"), info.get("sha256")) if isinstance(info, dict) else (None, None)
    if not (isinstance(name, str) and FROZEN_FILE.fullmatch(name) and isinstance(digest, str)):
        raise UserError(
            f"{path} names its frozen backbone {name!r}: a checkpoint's backbone is a backbone-<digest>.pt file "
            "beside it, nowhere else"
        )
    file = Path(path).parent / name
    if not file.is_file():
        raise UserError(f"{path} keeps its frozen backbone in {info['file']}, which is not beside it: copy both")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not tensors(state) or state_digest(state) != info["sha256"]:
        raise UserError(f"{file} is not the backbone {path} was written with (its weights changed)")
    return {FROZEN_PREFIX + k: v for k, v in state.items()}


def git_commit(package_root: Path = PACKAGE_ROOT) -> str | None:
    """The commit of this framework's code, with ``-dirty`` if it has uncommitted changes (untracked files
    included); None unless ``package_root`` is the top of its own git work tree, so a copy installed into
    someone else's repository (a ``.venv`` inside it) never reports their commit as ours."""
    try:
        run = dict(cwd=package_root, capture_output=True, text=True, timeout=10, check=True)
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], **run).stdout.strip()
        if Path(top).resolve() != package_root.resolve():
            return None
        sha = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_metadata(
    config: dict[str, Any], class_names: Sequence[str] | None, overrides: Sequence[str] | None = None
) -> dict[str, Any]:
    """What a checkpoint carries besides weights; plain types only, so ``weights_only=True`` loads it.

    Args:
        overrides: the command-line overrides that composed ``config``; resuming from the checkpoint
            recomposes the same config from them (None when the config was not composed from a command line).
    """
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "overrides": list(overrides) if overrides is not None else None,
        "class_names": list(class_names) if class_names is not None else None,
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            **{p: _version(p) for p in ("image_classification", "torch", "torchvision", "lightning", "timm")},
        },
    }


class RunMetadata(L.Callback):
    """Writes :func:`run_metadata` into every checkpoint the run saves, with the ``val/*`` metrics of the
    weights it holds (so the report of a tested checkpoint names that checkpoint's own validation scores), and
    the step they were measured at (``val_step``). A checkpoint saved after the weights moved on from the last
    validation (``every_n_train_steps`` within an epoch) holds no validation metrics: none were measured of it."""

    def __init__(self, metadata: dict[str, Any]):
        self.metadata = metadata
        self.validated: tuple[int, dict[str, float]] | None = None  # the step of the last validation, its metrics

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.validated = (trainer.global_step, metrics)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        step, metrics = self.validated if self.validated else (None, {})
        if step != trainer.global_step:
            step, metrics = None, {}
        checkpoint[METADATA_KEY] = {
            **self.metadata,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "val_metrics": metrics,
            "val_step": step,
        }


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written so that none is ever lost or half-written: to a temporary file in the checkpoint's
    own directory, flushed to the disk, then renamed over the old one. Killed while saving, a run leaves the
    previous checkpoint whole (the next run in that directory removes the dead process's temporary file); a
    full disk fails the save with one line and keeps the previous checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.swept: set[Path] = set()  # directories already cleared of dead writers' temporary files

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # a remote file system: Lightning's own (fsspec) writing
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        if path.parent not in self.swept and path.parent.is_dir():
            remove_stale_temporaries(path.parent)
            self.swept.add(path.parent)
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            raise UserError(
                f"could not write the checkpoint {path}: {err.strerror or err}; the checkpoint before it is kept"
            ) from None


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# What the metadata a checkpoint carries may hold, key by key (None is always allowed): read as data, checked
# before anything uses it, so a damaged or planted one is one line rather than a traceback further on.
METADATA_TYPES: dict[str, tuple[str, Any]] = {
    "class_names": ("a list of names", _texts),
    "overrides": ("a list of overrides", _texts),
    "val_metrics": (
        "a mapping of metrics to numbers",
        lambda v: (
            isinstance(v, dict) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v.values())
        ),
    ),
    "epoch": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "val_step": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "git_commit": ("text", lambda v: isinstance(v, str)),
}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mappings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


# What the training state Lightning restores from a checkpoint may be, key by key, checked before it is restored
TRAINING_STATE_TYPES: dict[str, tuple[str, Any]] = {
    "epoch": ("a whole number", _count),
    "global_step": ("a whole number", _count),
    "loops": ("a mapping", lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values())),
    "callbacks": (
        "a mapping of states",
        lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
    ),
    "optimizer_states": (
        "a list of optimizer states",
        lambda v: (
            _mappings(v) and all(isinstance(x.get("state"), dict) and _mappings(x.get("param_groups")) for x in v)
        ),
    ),
    "lr_schedulers": ("a list of scheduler states", _mappings),
}
# What a ModelCheckpoint's state names: files it wrote, and may remove when it writes better ones
CHECKPOINT_PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")


def confine_callback_paths(checkpoint: dict[str, Any], folder: Path) -> None:
    """Forget every file a checkpoint's callback state names (a ModelCheckpoint's best, k-th best and last
    checkpoints) that is not in ``folder``, the checkpoint's own: Lightning tests the best one, and removes the
    others, folders included, when it writes better ones. A checkpoint from elsewhere could name any path."""
    folder = folder.resolve()

    def inside(path: Any) -> bool:  # as written (Lightning compares it unresolved) and as resolved (links)
        if not isinstance(path, str) or "://" in path or ".." in Path(path).parts:
            return False
        return Path(path).resolve().parent == folder and Path(path).absolute().parent.resolve() == folder

    states = checkpoint.get("callbacks")
    for state in states.values() if isinstance(states, dict) else []:
        if not isinstance(state, dict) or "best_model_path" not in state:
            continue
        best_k = state.get("best_k_models")
        named = [state.get(key) for key in CHECKPOINT_PATHS] + (list(best_k) if isinstance(best_k, dict) else [best_k])
        if not all(inside(path) for path in named if path):  # forgotten whole: what is left stays consistent
            state.update({key: "" for key in CHECKPOINT_PATHS}, best_k_models={}, best_model_score=None)


def unreadable(path: Path, err: Exception) -> UserError:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line, without torch's advice to load it with
    ``weights_only=False`` (which runs whatever the file holds)."""
    blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
    if isinstance(err, pickle.UnpicklingError) or blocked:
        what = f" ({blocked[1]})" if blocked else ""
        return UserError(
            f"checkpoint {path} is refused: it holds a pickled Python object{what} that loading would run, and "
            "such a file can run any code; checkpoints of this framework hold only tensors and plain data"
        )
    return UserError(
        f"checkpoint {path} is not a readable PyTorch checkpoint: it is truncated, corrupt, or another kind of file"
    )


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True`` (memory-mapped: reading the metadata of a large
    checkpoint costs little); fails clearly if it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as err:  # unsafe pickled objects, or a truncated or corrupt file
        raise unreadable(path, err) from None
    if not isinstance(checkpoint, dict) or METADATA_KEY not in checkpoint:
        raise UserError(f"{path} carries no {METADATA_KEY!r} metadata: it was not written by this framework")
    metadata = checkpoint[METADATA_KEY]
    if not isinstance(metadata, dict) or not isinstance(metadata.get("config"), dict):
        raise UserError(f"the {METADATA_KEY!r} metadata of {path} holds no config: it is damaged or not ours")
    for key, (kind, admits) in METADATA_TYPES.items():
        if key in metadata and metadata[key] is not None and not admits(metadata[key]):
            raise UserError(f"{path}: its {METADATA_KEY}.{key} is not {kind}: it is damaged or not ours")
    for section in ("network", "data", "module", "loss"):
        if not isinstance(metadata["config"].get(section) or {}, dict):
            raise UserError(f"{path}: its config's {section} is not a mapping: it is damaged or not ours")
    if not tensors(checkpoint.get("state_dict", {})):
        raise UserError(f"the state_dict of {path} is not a mapping of weights: it is damaged or not ours")
    for key, (kind, admits) in TRAINING_STATE_TYPES.items():
        if key in checkpoint and not admits(checkpoint[key]):
            raise UserError(f"{path}: its {key} is not {kind}: it is damaged or not ours")
    return checkpoint


def tensors(state: Any) -> bool:
    """Whether ``state`` is a state dict: names to tensors."""
    return isinstance(state, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def load_network(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    trusted_targets: Sequence[str] = (),
) -> nn.Module:
    """Rebuild the trained network from a checkpoint file alone, in eval mode, ready for inference.

    Args:
        trusted_targets: ``_target_`` names or ``"my_package.*"`` patterns of your own network classes that
            the checkpoint's network config may build, beyond the networks this package trusts
            (:func:`~image_classification.trust.is_trusted_network`). Give them only for checkpoints you trust.

    The network's class names are in ``read_checkpoint(path)["image_classification"]["class_names"]``.
    """
    return network_from_checkpoint(read_checkpoint(path, map_location), path, map_location, trusted_targets)


def network_from_checkpoint(
    checkpoint: dict[str, Any],
    path: str | Path,
    map_location: str | torch.device = "cpu",
    trusted_targets: Sequence[str] = (),
) -> nn.Module:
    """:func:`load_network` of a checkpoint already read from ``path``."""
    network_config = checkpoint[METADATA_KEY]["config"].get("network")
    allowed = network_allow_list(network_config, trusted_targets)  # before anything it names is imported
    with weights_only_loading():
        network = build_trusted(without_starting_weights(network_config), allowed, f"the network of checkpoint {path}")
    if not isinstance(network, nn.Module):
        raise UserError(f"the network config of checkpoint {path} builds a {type(network).__name__}, not a network")
    prefix = "network."
    if FROZEN_KEY in checkpoint:
        checkpoint["state_dict"].update(read_frozen_backbone(checkpoint, path))
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:  # keys or shapes that are not the network's
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise UserError(f"the weights in {path} do not fit the network its config builds: {first[:300]}") from None
    return network.to(map_location).eval()


def save_feature_extractor(checkpoint_path: str | Path, path: str | Path, attribute: str = "trunk") -> Path:
    """Write the part ``network.<attribute>`` of a checkpoint's network (a jigsaw network's trunk) as a
    checkpoint of its own: its weights and the config that builds it, loadable with ``weights_only=True``.
    ``load_network(path)`` rebuilds it, and ``network.checkpoint=<path>`` starts a network from it."""
    checkpoint = read_checkpoint(checkpoint_path)
    metadata = checkpoint[METADATA_KEY]
    network_config = metadata["config"]["network"]
    if not isinstance(network_config.get(attribute), dict):
        raise UserError(f"the network of {checkpoint_path} has no {attribute!r} config to save as a feature extractor")
    prefix = f"network.{attribute}."
    state = {f"network.{k[len(prefix) :]}": v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise UserError(f"{checkpoint_path} holds no weights under {prefix!r}")
    extractor = {
        "state_dict": state,
        METADATA_KEY: {
            **{k: v for k, v in metadata.items() if k not in ("config", "overrides")},
            "config": {"network": network_config[attribute], "data": metadata["config"].get("data")},
            "overrides": None,  # not a run to continue
            "feature_extractor_of": str(Path(checkpoint_path).absolute()),
            "class_names": None,
        },
    }
    with atomic_path(path) as tmp:
        torch.save(extractor, tmp)
    return Path(path)
