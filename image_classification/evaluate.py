"""Test a checkpoint without training, on its own data or on any configured dataset.

    python -m image_classification.evaluate ckpt_path=<file> [data=<choice>] [data.<key>=<value> ...]

The network, loss and module come from the checkpoint, rebuilt under the allow-lists a stranger's checkpoint
gets (``trusted_targets=[...]`` vouches for more). Without ``data=<choice>`` the data is the checkpoint's own
data config, with the ``data.<key>=<value>`` overrides given now applied to it, built under the same
allow-lists; with one, it is the dataset configured here, as trainer.py would build it. A run directory of its
own (``logs/eval/runs/<time>``) gets metrics.json, report.json, config.yaml and the TensorBoard test metrics.
Settings: configs/evaluate.yaml.
"""

import contextlib
import datetime
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from image_classification import runs
from image_classification.checkpoint import (
    METADATA_KEY,
    RunMetadata,
    network_from_checkpoint,
    read_checkpoint,
    run_metadata,
)
from image_classification.config import (
    CONFIG_DIR,
    compose,
    instantiate,
    instantiate_each,
    one_line,
    quiet_library_noise,
    run_command,
    run_config_policy,
)
from image_classification.errors import UserError
from image_classification.inference import backbone_preprocessing
from image_classification.module import ClassificationModule
from image_classification.runs import merge_overrides
from image_classification.trust import (
    DATA_PREFIXES,
    allow_list,
    build_trusted,
    checkpoint_overrides,
    is_trusted_data,
    is_trusted_loss,
)

log = logging.getLogger("evaluate")


def apply_overrides(config: dict[str, Any], overrides: Sequence[str], root: str) -> dict[str, Any]:
    """``config`` (the node ``root`` of a config) with command-line overrides of its keys applied:
    ``key=value`` to an existing key, ``+key=value`` / ``++key=value`` to add one, ``~key`` to remove one."""
    node = OmegaConf.create({root: config})
    OmegaConf.set_struct(node, True)
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            with open_dict(node):
                OmegaConf.select(node, parent).pop(leaf)
            continue
        adds = override.is_add() or override.is_force_add()
        if not adds and OmegaConf.select(node, key, default=KeyError) is KeyError:
            raise UserError(f"{key} is not a key of the checkpoint's {root} config: add it with +{key}=...")
        with open_dict(node) if adds else contextlib.nullcontext():
            OmegaConf.update(node, key, override.value(), merge=False)
    return OmegaConf.to_container(node[root])


def split_data_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """The overrides to compose the config with, and the ``data.*`` ones for the checkpoint's own data config
    (None when the command line picks a ``data=<choice>``)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if any(o.key_or_group == "data" or o.key_or_group.startswith("data/") for o in parsed):
        return list(overrides), None
    data = [o.input_line for o in parsed if o.key_or_group.startswith("data.")]
    return [o.input_line for o in parsed if not o.key_or_group.startswith("data.")], data


def checkpoint_data(metadata: dict[str, Any], overrides: Sequence[str], data_overrides: Sequence[str]) -> dict:
    """A checkpoint's own data config: as stored, or, with ``data.*`` overrides, recomposed from the overrides
    its run was composed with under the ones given now (``data.root=...`` then reaches every value the run
    derived from it). Images are served as images: a probe trained on cached features runs its backbone."""
    saved = metadata.get("overrides")
    data = without_downloads(metadata["config"]["data"])
    if data_overrides and saved is not None:
        given = [*overrides, *data_overrides, "paths.output_dir=."]
        try:
            kept, left_out = checkpoint_overrides(saved, given, CONFIG_DIR, lambda lines: compose(lines, "evaluate"))
            recomposed = compose(merge_overrides(kept, given), "evaluate")
            data = OmegaConf.to_container(recomposed.data, resolve=True)
        except Exception as err:  # configs that changed since the run: keep its stored config
            log.warning(f"The run's config does not recompose here ({one_line(err)}): its stored data config is used")
            data = apply_overrides(data, data_overrides, "data")
        else:
            if left_out:
                log.warning(f"Of the overrides the checkpoint's run was composed with, left out: {', '.join(left_out)}")
    elif data_overrides:
        data = apply_overrides(data, data_overrides, "data")
    return {k: v for k, v in data.items() if k != "features"}


def without_downloads(node: Any) -> Any:
    """A checkpoint's data config that downloads nothing (``data.download=true`` on the command line does)."""
    if isinstance(node, dict):
        return {k: False if k == "download" and v else without_downloads(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_downloads(v) for v in node]
    return node


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# The module settings a checkpoint's config gives evaluate (ClassificationModule's arguments that change what a
# test measures); the others (compile options, the scheduler, channels_last) are training's.
EVALUATION_SETTINGS: dict[str, Callable[[Any], bool]] = {
    "num_classes": lambda value: _count(value) and value > 0,
    "top_k": _count,
    "per_class_metrics": lambda value: isinstance(value, bool),
}


def build_module(checkpoint: dict[str, Any], path: str, trusted: Sequence[str]) -> ClassificationModule:
    """The checkpoint's module: its network (``load_network``), its loss, its settings; no optimizer."""
    config = checkpoint[METADATA_KEY]["config"]
    module = config.get("module")
    target = module.get("_target_") if isinstance(module, dict) else None
    if target not in (
        "image_classification.ClassificationModule",
        f"{ClassificationModule.__module__}.ClassificationModule",
    ):
        raise UserError(
            f"the checkpoint's module is {target!r}: evaluate tests image_classification.ClassificationModule"
        )
    settings = {}
    for name, value in module.items():  # what evaluating needs, as plain values; nothing else (no compile options)
        if name in EVALUATION_SETTINGS:
            if not EVALUATION_SETTINGS[name](value):
                raise UserError(f"the checkpoint's module.{name} is {value!r}, not a setting evaluate can use")
            settings[name] = value
    if "num_classes" not in settings:
        raise UserError(f"the checkpoint's module config does not say how many classes it has: {path} is not ours")
    loss = build_trusted(
        config["loss"],
        allow_list(config["loss"], "loss", is_trusted_loss, "a loss", ("torch.nn.", "image_classification."), trusted),
        "the checkpoint's loss",
    )
    network = network_from_checkpoint(checkpoint, path, "cpu", trusted)
    names = checkpoint[METADATA_KEY].get("class_names")
    return ClassificationModule(network=network, loss=loss, optimizer=None, class_names=names, **settings)


def check_classes(module: ClassificationModule, classes: list[str] | None, num_classes: int) -> None:
    """The data must have the classes the network predicts, in the same order, or the scores mean nothing."""
    trained = module.class_names
    if num_classes != len(trained):
        raise UserError(f"the checkpoint classifies {len(trained)} classes but the data has {num_classes}")
    if classes is not None and list(classes) != trained:
        differ = next(i for i, (a, b) in enumerate(zip(classes, trained, strict=True)) if a != b)
        raise UserError(
            f"the data's classes are not the checkpoint's: class {differ} is {classes[differ]!r} in the data but "
            f"{trained[differ]!r} in the checkpoint"
        )


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[None]:
    """The log also goes to ``path`` while the block runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def tested_images(datamodule: Any) -> str:
    """How many images were tested, and which, for the command's output."""
    fraction = datamodule.test_fraction
    if "test" not in getattr(datamodule, "held_out_splits", []):
        how = "the data's test split"
    elif fraction == 1.0:
        how = "every image of the data (data.test_fraction=1)"
    else:
        how = f"the {fraction:g} of the data held out as its test split (data.test_fraction=1 tests every image)"
    bad = datamodule.bad_images.get("test")
    skipped = len(bad.seen) if bad is not None else 0
    unread = f"; {skipped} unreadable, left out (report.json names them)" if skipped else ""
    return f"{len(datamodule.datasets['test']) - skipped} images, {how}{unread}"


@run_config_policy()
def evaluate(cfg: DictConfig, overrides: Sequence[str] = (), data_overrides: Sequence[str] | None = ()) -> dict:
    """Test ``cfg.ckpt_path`` and write the run directory's records; returns metrics.json's contents.

    Args:
        data_overrides: ``data.*`` overrides of the checkpoint's own data config; None: ``cfg.data`` is the
            data (the command line picked a data choice).
    """
    start = time.perf_counter()
    quiet_library_noise()
    if cfg.ckpt_path is None:
        raise UserError("ckpt_path is required: add ckpt_path=<a .ckpt file> to the command line")
    path = runs.resolve_ckpt_path(cfg.ckpt_path, Path(cfg.paths.output_dir))
    checkpoint = read_checkpoint(path)
    trusted = list(cfg.trusted_targets)
    module = build_module(checkpoint, path, trusted)
    if data_overrides is None:
        datamodule = instantiate(cfg.data, "data")
    else:
        data = checkpoint_data(checkpoint[METADATA_KEY], overrides, data_overrides)
        allowed = allow_list(data, "data", is_trusted_data, "data", DATA_PREFIXES, trusted, dtypes=True)
        datamodule = build_trusted(data, allowed, "the checkpoint's data")
        with open_dict(cfg):
            cfg.data = data
    own = backbone_preprocessing(checkpoint[METADATA_KEY]["config"].get("data") or {}, module.network)
    if own is not None:  # a probe trained on its backbone's preprocessing is tested through it, whatever the data
        datamodule.eval_transform, datamodule.eval_batch_transform = own, None
    datamodule.prepare_data()
    datamodule.setup("test")
    check_classes(module, datamodule.classes, datamodule.num_classes)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["network"] = checkpoint[METADATA_KEY]["config"]["network"]
    # nothing is trained, so nothing to checkpoint
    callbacks = {k: c for k, c in instantiate_each(cfg.callbacks, "callback").items() if not isinstance(c, Checkpoint)}
    loggers = instantiate_each(cfg.logger, "logger")
    metadata = RunMetadata(run_metadata(resolved, module.class_names, overrides))
    trainer = instantiate(
        cfg.trainer,
        "trainer",
        callbacks=[*callbacks.values(), metadata],
        logger=list(loggers.values()) or False,
        enable_checkpointing=False,
    )
    run_dir = Path(cfg.paths.output_dir)
    runs.write_run_records(run_dir, resolved, overrides)
    with warnings.catch_warnings(), log_file(run_dir / "evaluate.log"):
        warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint")  # none trained here
        test_metrics = trainer.test(module, datamodule=datamodule, ckpt_path=path)[0]
    val_metrics, epoch = runs.checkpoint_val_metrics(path)
    report = {
        "metrics": test_metrics,
        "checkpoint": path,
        "checkpoint_epoch": epoch,
        "checkpoint_val_metrics": val_metrics,
        "data": "the checkpoint's" if data_overrides is not None else "configured",
        "wall_time_s": round(time.perf_counter() - start, 2),
        "run_dir": str(run_dir),
        "git_commit": metadata.metadata["git_commit"],
    }
    runs.write_report(run_dir, report)
    log.info(f"Run directory:   {run_dir}")
    log.info(f"Tested:          {tested_images(datamodule)}")
    log.info(f"Test accuracy:   {100 * test_metrics['test/acc']:.2f}% ({path})")
    return report


def main(argv: list[str] | None = None) -> dict | None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    composed, data_overrides = split_data_overrides(argv)
    if not any(line.split("=", 1)[0].lstrip("+~") == "paths.output_dir" for line in composed):
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        composed.append(f"paths.output_dir=${{paths.log_dir}}/${{task_name}}/runs/{stamp}")

    return run_command("evaluate", lambda cfg: evaluate(cfg, argv, data_overrides), __doc__, composed)


if __name__ == "__main__":
    main()
