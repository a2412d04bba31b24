"""The trust boundary: what comes from outside (a checkpoint and all it holds, shards, dataset files, feature
caches, a hub cache) is read as data, and nothing in it is instantiated except through these allow-lists.

A checkpoint can come from anyone: its network, its preprocessing and (to evaluate it) its data are rebuilt from
the config inside it, so every ``_target_`` there is checked against what such a part can be before anything is
imported, and Hydra instantiates under an allow-list of exactly those names
(``hydra.utils.execution_whitelist``). ``trusted_targets`` lets a caller vouch for more. The overrides a
checkpoint's run was composed with reach a new run's config only as :func:`checkpoint_overrides` allows, and
its network never fetches or reads starting weights (:func:`without_starting_weights`). ``docs/trust.md``
describes the whole boundary."""

import contextlib
import inspect
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.utils import execution_whitelist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from image_classification import networks
from image_classification.errors import UserError

# The nn.Module classes of these packages are networks a checkpoint may build without the caller vouching
# for more; so are this package's own networks (`networks.__all__`) and torchvision's model builders. A
# `_target_` outside these prefixes is refused before anything is imported.
TRUSTED_MODULE_PACKAGES = ("torch.nn.", "torchvision.models.", "timm.models.", "timm.layers.")
TRUSTED_PREFIXES = (*TRUSTED_MODULE_PACKAGES, "image_classification.")
# Preprocessing: torchvision's v2 transforms (not `Lambda`, which calls whatever it is given) and this
# package's batch transforms.
TRANSFORM_PREFIXES = ("torchvision.transforms.v2.", "image_classification.transforms.")
# Data: the DataModule, this package's datasets and dataset factories, torchvision's datasets, and transforms.
DATA_PREFIXES = (*TRANSFORM_PREFIXES, "torchvision.datasets.", "image_classification.")
# torchvision's image-classification datasets a checkpoint's data config may build: those that read their files as
# data (images, arrays, text, MATLAB files, tensors with weights_only, CIFAR's pickles only once their published
# MD5s match). Not LSUN, which unpickles a cache file it finds beside its data, nor the video and other datasets.
TORCHVISION_DATASETS = frozenset({
    "MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "USPS", "CIFAR10", "CIFAR100", "SVHN", "STL10",
    "Flowers102", "Food101", "OxfordIIITPet", "DTD", "GTSRB", "ImageFolder", "DatasetFolder", "Places365",
    "StanfordCars", "FGVCAircraft", "Caltech101", "Caltech256", "EuroSAT", "Country211", "PCAM", "SUN397",
    "ImageNet", "Imagenette", "FER2013", "RenderedSST2", "INaturalist", "CelebA",
})  # fmt: skip
# The one located object a data config may hold: a dtype (`ToDtype(dtype=torch.float32)`).
GET_OBJECT = "hydra.utils.get_object"
# Hydra's targets that look an object up by a name their argument gives.
LOCATORS = frozenset({GET_OBJECT, "hydra.utils.get_class", "hydra.utils.get_method", "hydra.utils.get_static_method"})
# The arguments through which the networks a checkpoint may build start from weights they fetch or read: ours
# (`checkpoint`), timm's (`create_model`), torchvision's model builders (and their older spellings) and
# open_clip's. A checkpoint's network is built without them (each constructor's default starts from none), and
# its own weights replace the network's.
STARTING_WEIGHTS = frozenset({
    "checkpoint", "checkpoint_path", "pretrained", "pretrained_backbone", "pretrained_cfg", "pretrained_cfg_overlay",
    "weights", "weights_backbone", "cache_dir",
})  # fmt: skip
# What a checkpoint from outside the run's own directory may set among the overrides its run was composed with:
# values of these sections' keys (the recipe); never callbacks, loggers, paths, Hydra's settings or a sweep's trial.
RECIPE_SECTIONS = ("data", "network", "module", "loss", "optimizer", "scheduler", "trainer", "seed")
# ...and the config groups it may choose from (your own files): those sections', a recipe, a probe's strategy
RECIPE_GROUPS = ("experiment", "strategy", "data", "network", "loss", "optimizer", "scheduler", "trainer")
CHOICE = re.compile(r"^[\w.-]+$")  # a config group's choice: a file name in configs/<group>/
# ...of the trainer's, those of the training itself; the machine's (accelerator, devices, strategy, plugins, where
# it writes) are the user's to say
RECIPE_TRAINER_KEYS = frozenset({
    "max_epochs", "min_epochs", "max_steps", "min_steps", "precision", "gradient_clip_val", "gradient_clip_algorithm",
    "accumulate_grad_batches", "val_check_interval", "check_val_every_n_epoch", "limit_train_batches",
    "limit_val_batches", "limit_test_batches", "log_every_n_steps", "num_sanity_val_steps", "deterministic",
    "benchmark", "sync_batchnorm", "overfit_batches", "reload_dataloaders_every_n_epochs",
})  # fmt: skip
# ...and never a place: a key that names a file, folder or URL to read or write (data.root, data.cache_dir,
# data.permutation_cache, ...), or a value written as one
PLACE_KEY = re.compile(r"(^|_)(root|dir|dirpath|path|file|filename|cache|out)$")
PLACE_VALUE = re.compile(r"[/\\]|^~")


def target_nodes(node: Any, key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(key, node)`` with a ``_target_`` in a plain config tree; refuses interpolations, which would be
    resolved."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node
        for name, value in node.items():
            yield from target_nodes(value, f"{key}.{name}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from target_nodes(value, f"{key}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise UserError(f"{key} holds an interpolation ({node!r}); a checkpoint's config is stored resolved")


def is_trusted_network(target: Any) -> bool:
    """Whether a located ``_target_`` is something a network can be: one of this package's networks
    (``networks.__all__``), an ``nn.Module`` class of torch.nn, torchvision.models or timm, or a torchvision
    model builder. Nothing that instantiates configs or runs a command."""
    ours = {id(getattr(networks, name)) for name in networks.__all__}
    if id(target) in ours:
        return True
    if inspect.isclass(target) and issubclass(target, nn.Module):
        return target.__module__.startswith(TRUSTED_MODULE_PACKAGES)
    import torchvision

    builders = {id(torchvision.models.get_model_builder(name)) for name in torchvision.models.list_models()}
    return id(target) in builders


def is_trusted_transform(target: Any) -> bool:
    """A torchvision v2 transform class other than ``Lambda``, or a transform class of
    ``image_classification.transforms``."""
    from torchvision.transforms import v2

    if not inspect.isclass(target):
        return False
    if issubclass(target, v2.Transform) and target.__module__.startswith("torchvision.transforms.v2"):
        return not issubclass(target, v2.Lambda)
    return issubclass(target, nn.Module) and target.__module__ == "image_classification.transforms"


def is_trusted_data(target: Any) -> bool:
    """A transform, the DataModule, a dataset class of this package or of torchvision, or one of this package's
    dataset factories (``image_folder``, ``imagenet``)."""
    from image_classification import data

    if is_trusted_transform(target) or target is data.DataModule:
        return True
    if inspect.isclass(target) and issubclass(target, Dataset):
        if target.__module__.startswith("torchvision.datasets."):
            return target.__name__ in TORCHVISION_DATASETS
        return target.__module__.startswith("image_classification.data.")
    return target is data.image_folder or target is data.imagenet


def is_trusted_loss(target: Any) -> bool:
    """A loss module of torch.nn or of ``image_classification.losses``."""
    if not (inspect.isclass(target) and issubclass(target, nn.Module)):
        return False
    return target.__module__.startswith("torch.nn.modules.loss") or target.__module__ == "image_classification.losses"


def _is_dtype(node: dict[str, Any]) -> bool:
    """``{_target_: hydra.utils.get_object, path: torch.<dtype>}``, and nothing else."""
    path = node.get("path")
    if set(node) != {"_target_", "path"} or not isinstance(path, str) or not path.startswith("torch."):
        return False
    return isinstance(getattr(torch, path[len("torch.") :], None), torch.dtype)


def _locate(target: str, prefixes: Sequence[str]) -> Any:
    if not target.startswith(tuple(prefixes)):
        return None
    try:
        return hydra.utils.get_object(target)
    except Exception:  # a name that does not import is not trusted either
        return None


def _matches(target: str, patterns: Sequence[str]) -> bool:
    """Hydra's whitelist matching: an exact name, or a ``"package.*"`` prefix."""
    return any(target == p or (p.endswith(".*") and target.startswith(p[:-1])) for p in patterns)


def allow_list(
    config: Any,
    key: str,
    trusted: Callable[[Any], bool],
    what: str,
    prefixes: Sequence[str] = TRUSTED_PREFIXES,
    trusted_targets: Sequence[str] = (),
    dtypes: bool = False,
) -> list[str]:
    """What Hydra may call to build ``config`` (a checkpoint's ``key``): each ``_target_`` in it, checked to be
    ``trusted`` once located (only names under ``prefixes`` are imported to check) or to match one of the
    caller's ``trusted_targets`` (``"my_lab.nets.*"``), with the canonical name of what it resolves to, and the
    module of a builder function (Hydra also checks the class of what a builder returns).

    Args:
        what: what the part is, for the message (``"a network"``).
        dtypes: also allow ``hydra.utils.get_object`` where it looks up a torch dtype.
    """
    allowed = list(trusted_targets)
    for where, node in target_nodes(config, key):
        target = node["_target_"]
        if not isinstance(target, str):
            raise UserError(f"{where}._target_ is {target!r}, not a dotted name")
        if _matches(target, trusted_targets):  # the caller vouches for it, and so for what it resolves to
            located = _locate(target, (target,))
            if located is not None and hasattr(located, "__qualname__"):
                allowed.append(f"{located.__module__}.{located.__qualname__}")
            continue
        if dtypes and target == GET_OBJECT and _is_dtype(node):
            allowed += [GET_OBJECT, node["path"]]  # Hydra checks the path it looks up too
            continue
        located = _locate(target, prefixes)
        if located is None or not trusted(located):
            raise UserError(
                f"the checkpoint's {where} is built by {target!r}, which is not {what} this package trusts: "
                f"if you trust the checkpoint, pass trusted_targets=[{target!r}]"
            )
        allowed += [target, f"{located.__module__}.{located.__qualname__}"]
        if not inspect.isclass(located):  # Hydra also checks the class of what a builder returns
            allowed += [f"{package}*" for package in (*TRUSTED_MODULE_PACKAGES, "image_classification.data.")]
    return list(dict.fromkeys(allowed))


def network_allow_list(config: dict[str, Any], trusted_targets: Sequence[str] = (), key: str = "network") -> list[str]:
    """:func:`allow_list` for a network config (:func:`is_trusted_network`)."""
    return allow_list(config, key, is_trusted_network, "a network", TRUSTED_PREFIXES, trusted_targets)


def transform_allow_list(config: Any, key: str, trusted_targets: Sequence[str] = ()) -> list[str]:
    """:func:`allow_list` for preprocessing (:func:`is_trusted_transform`, and dtypes)."""
    return allow_list(
        config, key, is_trusted_transform, "a transform", TRANSFORM_PREFIXES, trusted_targets, dtypes=True
    )


def build_trusted(config: Any, allowed: Sequence[str], what: str) -> Any:
    """``hydra.utils.instantiate(config)`` allowed to call only ``allowed`` (an :func:`allow_list`), also from
    inside a run's unrestricted policy; a failure is one line naming ``what`` was being built."""
    with execution_whitelist(list(allowed), reset=True):
        try:
            return hydra.utils.instantiate(config, _convert_="all")
        except Exception as err:
            message = " ".join(str(err).split())
            raise UserError(f"{what} could not be rebuilt: {message}") from err


def without_starting_weights(node: Any) -> Any:
    """A copy of a network config (already allowed: its targets are located to see what they take) built from
    which no network fetches or reads starting weights (:data:`STARTING_WEIGHTS`): each such argument that a
    target declares is given its "none" value, also where the config leaves it out (torchvision's segmentation
    builders start their backbone from ImageNet weights by default), and the others are dropped."""
    if isinstance(node, list | tuple):
        return [without_starting_weights(v) for v in node]
    if not isinstance(node, dict):
        return node
    cleared = {k: without_starting_weights(v) for k, v in node.items() if k not in STARTING_WEIGHTS}
    target = node.get("_target_")
    try:
        parameters = inspect.signature(hydra.utils.get_object(target)).parameters if isinstance(target, str) else {}
    except (ValueError, TypeError, ImportError, AttributeError):  # building it fails too, and says so
        parameters = {}
    for name in STARTING_WEIGHTS & set(parameters):
        cleared[name] = False if isinstance(parameters[name].default, bool) else None
    return cleared


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every ``torch.load`` in the block reads tensors and plain data only, also where a library asks for more
    (``torch.hub.load_state_dict_from_url`` unpickles a cached file freely): a file from outside never runs code.
    This is torch's own switch (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), read at every load."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)  # both set is an error in torch
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _plain(value: Any) -> bool:
    """A value a checkpoint may set: a number, true/false, null, text that is not an interpolation (a resolver
    could read files, URLs and the environment), or a list of those."""
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return "${" not in value
    if isinstance(value, list):
        return all(_plain(v) and not isinstance(v, list) for v in value)
    return False


def _why_not_choice(override: Override) -> str | None:
    values = override.value() if isinstance(override.value(), list) else [override.value()]
    if override.key_or_group.split("/")[0] not in RECIPE_GROUPS:
        return "not part of the recipe"
    if override.package is not None:
        return "places a config elsewhere"
    if not override.is_delete() and not all(isinstance(v, str) and CHOICE.match(v) for v in values):
        return "not a choice of the group"
    return None


def _why_not_value(override: Override, composed: DictConfig) -> str | None:
    key = override.key_or_group
    parts = key.split(".")
    if parts[0] not in RECIPE_SECTIONS or (parts[0] == "trainer" and parts[-1] not in RECIPE_TRAINER_KEYS):
        return "not part of the recipe"
    if any(part.startswith("_") for part in parts):
        return "a Hydra key"
    if parts[-1] in STARTING_WEIGHTS:
        return "starting weights (the checkpoint's own replace them)"
    if parts[-1] == "download":
        return "fetches data"
    if override.is_delete():
        return "removes a key"
    if not _plain(override.value()):
        return "not a plain value"
    parent = OmegaConf.select(composed, ".".join(parts[:-1]), default=None) if len(parts) > 1 else composed
    if isinstance(parent, DictConfig) and parent.get("_target_") in LOCATORS:
        return "names an object to look up"
    values = override.value() if isinstance(override.value(), list) else [override.value()]
    if PLACE_KEY.search(parts[-1]) or any(isinstance(v, str) and PLACE_VALUE.search(v) for v in values):
        return "a place on the machine it was written on"
    if not isinstance(parent, DictConfig) or parts[-1] not in parent:
        return "a new key"
    return None


def checkpoint_overrides(
    saved: Sequence[str], given: Sequence[str], config_dir: Path, compose: Callable[[list[str]], DictConfig]
) -> tuple[list[str], list[str]]:
    """Of the overrides a checkpoint's run was composed with (``saved``), those a run that starts from the
    checkpoint outside that run's own directory takes, and the others, each with why it is left out (``"key=value
    (why)"``). Taken: choices of the recipe's config groups (:data:`RECIPE_GROUPS`: the user's own files), and
    plain values (:func:`_plain`) of keys of the recipe's sections that the config composed here has. The overrides
    given now (``given``) replace saved ones of the same key, so those are not examined.

    Args:
        compose: the config that ``python trainer.py <overrides>`` composes, to check that a key exists.
    """
    parser = OverridesParser.create()
    replaced = {o.key_or_group for o in parser.parse_overrides(list(given))}
    choices, values, left_out = [], [], []
    for override in parser.parse_overrides(list(saved)):
        if override.key_or_group in replaced:
            continue
        if override.is_sweep_override():
            left_out.append(f"{override.input_line} (a sweep)")
        elif (config_dir / override.key_or_group).is_dir() or override.key_or_group.startswith("hydra/"):
            why = _why_not_choice(override)
            (left_out.append(f"{override.input_line} ({why})") if why else choices.append(override.input_line))
        else:
            values.append(override)
    composed = compose([*choices, *given]) if values else None
    kept = list(choices)
    for override in values:
        why = _why_not_value(override, composed)
        if why:
            left_out.append(f"{override.input_line} ({why})")
        else:  # the key is there: `+key` (it was added to the config of the run then) sets it now
            kept.append(f"+{override.input_line}" if override.is_add() else override.input_line)
    return kept, left_out
