"""Turning the composed config into objects: ``_target_`` instantiation with errors a user can act on,
the execution policy a run's own config runs under, the config tree printed at start, and the resolvers
the configs use."""

import collections.abc
import contextlib
import dataclasses
import logging
import math
import os
import re
import signal
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import rich.syntax
import rich.tree
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.utils import UNSAFE_DISABLE_EXECUTION_CHECKS, execution_whitelist
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException
from rich.console import Console

from image_classification.data import image_folder_classes, shard_channels, shard_classes, usable_cpus
from image_classification.errors import UserError
from image_classification.sweeps import continued_seed
from image_classification.trust import weights_only_loading

log = logging.getLogger(__name__)

# A run's config is the user's own code: their YAML, their command line, their `_target_`s in their own
# modules. It runs with Hydra's unrestricted policy, entered once at the top of a run (`run_config_policy`).
# `instantiate` below never names a policy itself: it inherits the one in force, so inside
# `checkpoint.load_network`'s allow-list it stays restricted whatever a checkpoint's config asks for.
RUN_CONFIG_POLICY = UNSAFE_DISABLE_EXECUTION_CHECKS
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class RunConfigPolicy(contextlib.ContextDecorator):
    """The context (or decorator) a run's own config is instantiated in: unrestricted, while every file it loads
    with ``torch.load`` is read as data (:func:`~image_classification.trust.weights_only_loading`: a torchvision or
    timm network's pretrained weights come from a hub cache, which is not the user's own). A class, not a
    generator-based context manager, so that a function it decorates pickles (the joblib launcher sends the task
    to its workers)."""

    def __init__(self) -> None:
        self._entered: list[Any] = []

    def __enter__(self) -> None:
        context = contextlib.ExitStack()
        context.enter_context(execution_whitelist(RUN_CONFIG_POLICY, reset=True))
        context.enter_context(weights_only_loading())
        self._entered.append(context)

    def __exit__(self, *exc: Any) -> bool | None:
        return self._entered.pop().__exit__(*exc)

    def __getstate__(self) -> dict[str, Any]:
        return {"_entered": []}


def run_config_policy() -> RunConfigPolicy:
    """The context (or decorator) a run's own config is instantiated in."""
    return RunConfigPolicy()


def check_trainer(trainer: Mapping[str, Any]) -> None:
    """Refuse a GPU accelerator on a machine without one, with the fix, and counts Lightning divides by that are
    not 1 or more, before Lightning's traceback."""
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, int) and accumulate < 1:
        raise UserError(f"trainer.accumulate_grad_batches must be 1 or more, not {accumulate}")
    accelerator = str(trainer.get("accelerator"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} but this machine has no CUDA GPU: use trainer=cpu, "
            "or trainer.accelerator=auto to train on whatever there is"
        )


def _not_bool(kind: type) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, kind) and not isinstance(value, bool)


# What a YAML value can be, by annotation: the words for it, and the test.
SIMPLE_TYPES: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    type(None): ("null", lambda value: value is None),
    bool: ("true or false", lambda value: isinstance(value, bool)),
    int: ("a whole number", _not_bool(int)),
    float: ("a number", _not_bool(int | float)),
    str: ("text", lambda value: isinstance(value, str)),
    list: ("a list", lambda value: isinstance(value, ListConfig | list | tuple)),
    tuple: ("a list", lambda value: isinstance(value, ListConfig | list | tuple)),
    collections.abc.Sequence: ("a list", lambda value: isinstance(value, ListConfig | list | tuple)),
    dict: ("a mapping", lambda value: isinstance(value, DictConfig | dict)),
    collections.abc.Mapping: ("a mapping", lambda value: isinstance(value, DictConfig | dict)),
    Path: ("a path", lambda value: isinstance(value, str)),
    os.PathLike: ("a path", lambda value: isinstance(value, str)),
    # an object built from a config of its own (a transform): never a plain value
    collections.abc.Callable: ("a config with a _target_", lambda value: isinstance(value, DictConfig | dict)),
}


def _alternatives(annotation: Any) -> list[tuple[str, Callable[[Any], bool]]] | None:
    """What an annotation admits, as (words, test) pairs; None when it admits anything, or something this
    check does not know (a tensor, a path, a class of the library's own)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [_alternatives(member) for member in typing.get_args(annotation)]
        return None if any(m is None for m in members) else [a for m in members for a in m]
    if origin is typing.Literal:
        return [
            (repr(v), lambda value, v=v: value == v and type(value) is type(v)) for v in typing.get_args(annotation)
        ]
    simple = SIMPLE_TYPES.get(origin or annotation)
    return [simple] if simple else None


@dataclasses.dataclass
class RunSettings:
    """What the top-level keys of a run's config (configs/train.yaml) declare: the types ``check_types`` holds
    them to, as a ``_target_``'s annotations declare the keys under it."""

    task_name: str = "train"
    seed: int | None = 42  # 0 to 2**32 - 1 (NumPy's seeds)
    ckpt_path: str | None = None
    resume: typing.Literal["auto"] | None = None
    optimized_metric: str | None = None
    print_config: bool = True


def _annotations(target: str) -> dict[str, Any]:
    """The parameter annotations of what ``target`` names (a class's ``__init__``); empty when unknown."""
    try:
        obj = hydra.utils.get_object(target)
        function = obj.__init__ if isinstance(obj, type) else obj
        hints = typing.get_type_hints(function)
    except Exception:  # not importable (instantiate says so), or annotations that do not evaluate
        return {}
    return {k: v for k, v in hints.items() if k != "return"}


def check_types(cfg: DictConfig) -> None:
    """Refuse a value of the wrong type for what its ``_target_`` declares (``trainer.max_epochs=abc``), with
    one line naming the key, before anything runs: otherwise the library fails mid-run with a traceback."""
    nodes = [cfg]
    while nodes:
        node = nodes.pop()
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        hints = _annotations(target) if isinstance(target, str) else {}
        if node is cfg:
            target, hints = "the run", typing.get_type_hints(RunSettings)
        for key in node if isinstance(node, DictConfig) else range(len(node)):
            try:
                value = node[key]
            except OmegaConfBaseException:  # a missing value, reported where it is used
                continue
            if isinstance(value, DictConfig | ListConfig):
                nodes.append(value)
            elif (
                isinstance(value, list) or value is None and node.get("_partial_")
            ):  # a resolver's list (per_channel): as a list in the config, not checked
                continue
            elif isinstance(value, float) and math.isnan(value):
                raise UserError(f"{node._get_full_key(key)} must not be NaN: give the value it takes")
            elif isinstance(key, str) and key in hints:
                alternatives = _alternatives(hints[key])
                if alternatives and not any(admits(value) for _, admits in alternatives):
                    expected = " or ".join(dict.fromkeys(words for words, _ in alternatives))
                    shown = f"the text {value!r}" if isinstance(value, str) else repr(value)
                    raise UserError(f"{node._get_full_key(key)} must be {expected} (for {target}), not {shown}")
                if value == "" and any(words == "a path" for words, _ in alternatives or []):
                    raise UserError(f"{node._get_full_key(key)} must be a path (for {target}), not empty text")


def one_line(err: BaseException) -> str:
    """An exception's message folded onto one line, without OmegaConf's ``full_key`` and ``object_type`` notes."""
    text = re.sub(r"\s*(full_key: |object_type=)\S+", "", str(err))
    return " ".join(text.split())


def _root_cause(err: BaseException) -> BaseException:
    """The first UserError in ``err``'s chain of causes (an interpolation's resolver's error included), else the
    last cause."""
    while not isinstance(err, UserError):
        cause = err.__cause__
        if cause is None and isinstance(err, InterpolationResolutionError):
            cause = err.__context__  # OmegaConf wraps a resolver's error without naming it as the cause
        if cause is None:
            break
        err = cause
    return err


def user_message(err: BaseException) -> str:
    """One line telling the user what to fix, for an error from the config or from :func:`instantiate`."""
    cause = _root_cause(err)
    missing = re.search(r"Missing mandatory value: ([\w.]+)", str(cause))
    return f"{missing[1]} is required: add {missing[1]}=... to the command line" if missing else one_line(cause)


def instantiate(node: DictConfig | None, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that logs the ``_target_`` and turns failures into one-line UserErrors.

    Arguments reach the objects as plain ``dict``/``list`` (``_convert_="all"``), never as OmegaConf
    containers, so whatever an object keeps (an optimizer's ``betas``) pickles into a checkpoint that
    ``torch.load(weights_only=True)`` reads. ``HYDRA_FULL_ERROR=1`` re-raises the original exception.
    """
    if node is None:
        return None
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if target is not None:
        log.info(f"Instantiating {what} <{target}>")
    try:
        return hydra.utils.instantiate(node, **{"_convert_": "all", **kwargs})
    except Exception as err:  # a constructor's own ValueError as much as Hydra's errors: the user fixes both
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        cause = _root_cause(err)
        if isinstance(cause, UserError):
            raise cause from None
        if "Error locating target" in str(err):
            raise UserError(
                f"{what}: _target_ {target!r} does not import ({one_line(cause)}); check the spelling, "
                "and that its module is on PYTHONPATH"
            ) from None
        if isinstance(cause, ImportError):  # the target imports, but needs a package that is not installed
            raise UserError(f"{what} needs a package that is not installed: {one_line(cause)}") from None
        raise UserError(
            f"{what}: {type(cause).__name__}: {one_line(cause)} (HYDRA_FULL_ERROR=1 shows the traceback)"
        ) from None


def build_module(cfg: DictConfig, class_names: list[str] | None = None, datamodule: Any = None):
    """The LightningModule with its injected network, loss, optimizer and scheduler. A frozen backbone whose
    features ``datamodule`` caches (linear evaluation) is that very backbone, built and loaded once."""
    features = getattr(datamodule, "features", None)
    shared = {}
    if features is not None and isinstance(cfg.network, DictConfig) and "backbone" in cfg.network:
        shared["backbone"] = features.backbone
    return instantiate(
        cfg.module,
        "module",
        network=instantiate(cfg.network, "network", **shared),
        loss=instantiate(cfg.loss, "loss"),
        optimizer=instantiate(cfg.optimizer, "optimizer"),
        scheduler=instantiate(cfg.scheduler, "scheduler"),
        class_names=class_names,
    )


def compose(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """The config ``python trainer.py <overrides>`` would run, for the commands that are not trainer.py;
    ``paths.output_dir`` must be given (there is no Hydra run directory)."""
    if not CONFIG_DIR.is_dir():
        raise UserError(f"{CONFIG_DIR} does not exist: run the commands from a checkout of this project")
    with hydra.initialize_config_dir(config_dir=str(CONFIG_DIR)):
        return hydra.compose(config_name, overrides=list(overrides))


def run_command(config_name: str, run: Callable[[DictConfig], Any], doc: str, argv: Sequence[str] | None = None) -> Any:
    """A ``python -m image_classification.<command> key=value ...`` command: its config
    (``configs/<config_name>.yaml``) composed with the command line, struct mode on, then ``run(cfg)``; a
    mistake is one line and exit 1, ``--help`` prints ``doc``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(doc)
        return None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_library_noise()
    try:
        cfg = compose(argv, config_name)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise UserError(f"{missing[0]} is required: add {missing[0]}=... to the command line")
        return run(cfg)
    except SIGTERMException:  # Lightning's: a scheduler or `kill` stopped the command mid-way
        log.warning(f"Stopped by SIGTERM: {config_name} did not finish")
        sys.exit(128 + signal.SIGTERM)
    except (UserError, OmegaConfBaseException, HydraException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"Error: {user_message(err)}")


def instantiate_each(node: DictConfig | None, what: str) -> dict[str, Any]:
    """Instantiate every entry with a ``_target_`` of a mapping (the callbacks and logger groups), by name."""
    if not node:
        return {}
    return {
        name: instantiate(entry, f"{what} {name}")
        for name, entry in node.items()
        if isinstance(entry, DictConfig) and "_target_" in entry
    }


def print_config_tree(cfg: DictConfig, first: tuple[str, ...] = ("data", "network", "module")) -> None:
    """Print the resolved config as a tree, one branch per top-level key."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in first if k in cfg] + [k for k in cfg if k not in first]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    Console(soft_wrap=True).print(tree)


def check_command_line(overrides: Sequence[str], config_dir: Path) -> None:
    """Refuse ``group=null`` for a config group, which Hydra would answer with a traceback: ``~group``
    is how a group is left out."""
    parser = OverridesParser.create()
    for line in overrides:
        try:
            (override,) = parser.parse_overrides([line])
        except Exception:  # a flag, a flag's value, or a malformed override: Hydra reports those
            continue
        group = override.key_or_group
        if override.value() is None and not override.is_delete() and (config_dir / group).is_dir():
            names = ", ".join(sorted(p.stem for p in (config_dir / group).glob("*.yaml")))
            raise UserError(f"{group}=null is not a choice: use ~{group} to leave it out, or {group}=<{names}>")


def _not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(("💡 Tip:", "Trainer already configured with model summary"))


def quiet_library_noise() -> None:
    """Drop what Lightning prints on every run that tells the user nothing about their run: an advert and
    notes about its own internals."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _not_noise not in logger.filters:
        logger.addFilter(_not_noise)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # Not so: the training loader continues its epoch through the DataModule's state (data/sampling.py)
    warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable")
    # a finished run resumed, or a checkpoint evaluated, asks for the best validation accuracy it restored
    # without a validation of its own: the value restored is the one meant
    warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric MaxMetric was called before")
    # litdata's notes on how it reads shards (in place, or its cache's size) on every split of every run
    logging.getLogger("litdata").setLevel(logging.WARNING)


def device_count(accelerator: Any, devices: Any) -> int:
    """How many devices Lightning will train on for these ``trainer.accelerator`` / ``trainer.devices``."""
    if isinstance(devices, Sequence) and not isinstance(devices, str):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if str(devices) in ("auto", "-1"):  # Lightning: every GPU there is, or one CPU process
        return 1 if str(accelerator) == "cpu" else max(1, torch.cuda.device_count())
    return int(devices)


def scaled_lr(base_lr: float, base_batch: int, *, _root_: DictConfig) -> float:
    """``base_lr`` scaled linearly with the effective batch (Goyal et al., 2017): ``data.batch_size`` x devices
    x ``trainer.num_nodes`` x ``trainer.accumulate_grad_batches`` over ``base_batch`` (the
    ``${scaled_lr:5.0e-4,512}`` resolver), so a recipe stays right on one GPU or 64."""
    trainer = _root_.trainer
    devices = device_count(trainer.get("accelerator", "auto"), trainer.get("devices", 1))
    batch = _root_.data.batch_size * devices * trainer.get("num_nodes", 1) * trainer.get("accumulate_grad_batches", 1)
    return float(base_lr) * batch / float(base_batch)


def per_channel(channels: int, values: Sequence[float]) -> list[float]:
    """``values`` (one per RGB channel) for images of ``channels`` channels: as they are for 3, their mean for 1
    (the grey image's), rounded where they are whole numbers (a uint8 colour)."""
    values = list(values)
    if channels == len(values):
        return values
    if channels != 1:
        raise UserError(f"data.channels is {channels}: images are grey (1) or RGB (3)")
    mean = sum(values) / len(values)
    return [round(mean) if all(isinstance(v, int) for v in values) else round(mean, 4)]


def register_resolvers() -> None:
    """Resolvers for derived values, so the printed config shows what ran."""
    resolvers = {
        "image_folder_classes": image_folder_classes,
        "shard_classes": shard_classes,
        "shard_channels": shard_channels,
        # RGB values as they are for 3 channels; for 1 (grey images), their mean
        "per_channel": per_channel,
        # The resize before a centre crop of `size` that keeps `crop_ratio` of the image: 256 for 224.
        "resize_for_crop": lambda size, crop_ratio: round(size / crop_ratio),
        # Loader defaults chosen from the machine the run is on.
        "usable_cpus": usable_cpus,
        "cuda_available": torch.cuda.is_available,
        "scaled_lr": scaled_lr,
        # A sweep's sampler seed, moved on by the trials its study already holds.
        "continued_seed": continued_seed,
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_resolver(name, resolver, replace=True)
