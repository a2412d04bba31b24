"""Turning the composed config into objects: ``_target_`` instantiation with errors a user can act on,
the config tree printed at start, and the resolvers the configs use."""

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import hydra
import rich.syntax
import rich.tree
from hydra.errors import InstantiationException
from hydra.utils import UNSAFE_DISABLE_EXECUTION_CHECKS
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from image_classification.data import image_folder_classes
from image_classification.errors import UserError

log = logging.getLogger(__name__)

# A run's config is the user's own code: their YAML, their command line, their `_target_`s in their own
# modules. It runs with Hydra's legacy, unrestricted policy; a config read from a checkpoint does not
# (see checkpoint.load_network).
RUN_CONFIG_POLICY = UNSAFE_DISABLE_EXECUTION_CHECKS


def one_line(err: BaseException) -> str:
    """An exception's message folded onto one line."""
    return " ".join(str(err).split())


def _root_cause(err: BaseException) -> BaseException:
    """The first UserError in ``err``'s chain of causes, else the last cause."""
    while not isinstance(err, UserError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def user_message(err: BaseException) -> str:
    """One line telling the user what to fix, for an error from the config or from :func:`instantiate`."""
    cause = _root_cause(err)
    missing = re.search(r"Missing mandatory value: ([\w.]+)", str(cause))
    return f"{missing[1]} is required: add {missing[1]}=... to the command line" if missing else one_line(cause)


def instantiate(node: DictConfig | None, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that logs the ``_target_`` and turns failures into one-line UserErrors.

    ``HYDRA_FULL_ERROR=1`` re-raises the original exception with its traceback.
    """
    if node is None:
        return None
    target = node.get("_target_") if isinstance(node, Mapping) else None
    if target is not None:
        log.info(f"Instantiating {what} <{target}>")
    try:
        return hydra.utils.instantiate(node, _execution_whitelist_=RUN_CONFIG_POLICY, **kwargs)
    except InstantiationException as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        cause = _root_cause(err)
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, ImportError) or "Error locating target" in str(err):
            raise UserError(
                f"{what}: _target_ {target!r} does not import ({one_line(cause)}); check the spelling, "
                "and that its module is on PYTHONPATH"
            ) from None
        raise UserError(f"{what}: {one_line(err)} (HYDRA_FULL_ERROR=1 shows the traceback)") from None


def instantiate_each(node: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a mapping (the callbacks and logger groups)."""
    if not node:
        return []
    return [
        instantiate(entry, f"{what} {name}")
        for name, entry in node.items()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]


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


def register_resolvers() -> None:
    """Resolvers for derived values, so the printed config shows what ran."""
    resolvers = {
        "image_folder_classes": image_folder_classes,
        # The resize before a centre crop of `size` that keeps `crop_ratio` of the image: 256 for 224.
        "resize_for_crop": lambda size, crop_ratio: round(size / crop_ratio),
    }
    for name, resolver in resolvers.items():
        OmegaConf.register_resolver(name, resolver, replace=True)
