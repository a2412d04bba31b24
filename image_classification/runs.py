"""A run's directory and its records: which checkpoint to continue, the config a resumed run recomposes,
``config.yaml`` / ``overrides.yaml`` written once the run is known to be valid, and ``metrics.json``."""

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from image_classification.checkpoint import FROZEN_KEY, FROZEN_PREFIX, METADATA_KEY, read_checkpoint
from image_classification.config import CONFIG_DIR
from image_classification.errors import UserError
from image_classification.files import atomic_path
from image_classification.trust import checkpoint_overrides

log = logging.getLogger(__name__)
LAST = "last"


def last_checkpoint(run_dir: Path) -> Path:
    """Where a run keeps the checkpoint of its last finished epoch."""
    return run_dir / "checkpoints" / "last.ckpt"


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint file ``ckpt_path`` names: a file, or ``last`` for the run directory's ``last.ckpt``."""
    if ckpt_path is None:
        return None
    if ckpt_path == LAST:
        path = last_checkpoint(run_dir)
        if not path.is_file():
            raise UserError(
                f"ckpt_path=last: there is no {path}; to continue a run, add hydra.run.dir=<that run's directory>, "
                "or give ckpt_path=<a .ckpt file>"
            )
        return str(path)
    if not Path(ckpt_path).is_file():
        raise UserError(f"ckpt_path {ckpt_path} does not exist: give a .ckpt file, `last`, or null")
    return str(ckpt_path)


def checkpoint_files(directory: Path) -> list[Path]:
    """The checkpoints in ``directory``: its ``*.ckpt`` files, not the hidden temporary file of a save that was
    killed (``.last.<pid>.tmp.ckpt``), which is never a checkpoint."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.ckpt") if not p.name.startswith(".") and p.is_file())


def auto_resume(run_dir: Path) -> str | None:
    """``resume=auto``: the run directory's last valid checkpoint (``last.ckpt``; if it cannot be read, the
    readable one that trained furthest), or None when the directory holds none; says which."""
    directory = run_dir / "checkpoints"
    files = checkpoint_files(directory)
    if not files:
        log.info(f"resume=auto: no checkpoint in {directory}, starting fresh")
        return None
    last = last_checkpoint(run_dir)
    readable = {}
    for path in ([last] if last in files else []) + [f for f in files if f != last]:
        try:
            readable[path] = read_checkpoint(path).get("global_step", 0)
        except UserError as err:
            log.warning(f"resume=auto: {err}")
        if path == last and path in readable:
            break
    if not readable:
        raise UserError(
            f"resume=auto: none of the {len(files)} checkpoints in {directory} can be read; move them away to "
            "start fresh, or give ckpt_path=<a good copy>"
        )
    path = last if last in readable else max(readable, key=lambda p: readable[p])
    log.info(f"resume=auto: continuing {path} (step {readable[path]})")
    return str(path)


def check_fresh_start(run_dir: Path, ckpt_path: str | None) -> None:
    """A new run must not mix its checkpoints and logs with those of another run in the same directory."""
    directory = run_dir / "checkpoints"
    if ckpt_path is None and checkpoint_files(directory):
        raise UserError(
            f"{directory} already holds checkpoints of a run: add ckpt_path=last (or resume=auto) to continue "
            "it, or choose another hydra.run.dir to start a new one"
        )


def resumed_step(checkpoint: dict[str, Any] | None) -> int:
    """The step a run resumed from ``checkpoint`` logs from (0 for a fresh run): what the loggers keep before."""
    if checkpoint is None:
        return 0
    state = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    steps = state.get("_batches_that_stepped", 0) if isinstance(state, dict) else None
    if type(steps) is not int or steps < 0:
        raise UserError("the checkpoint's training loop state does not count its steps: it is damaged or not ours")
    return steps


def check_resumable(ckpt_path: str | None, checkpoint: dict[str, Any] | None, max_epochs: int | None) -> None:
    """A resumed run must have epochs left to train, or at least no fewer than the checkpoint has done."""
    if checkpoint is None or max_epochs is None or max_epochs < 0:
        return
    done = checkpoint.get("epoch", 0) + 1
    if max_epochs < done:
        raise UserError(
            f"{ckpt_path} has trained {done} epochs but trainer.max_epochs={max_epochs}: "
            f"set trainer.max_epochs to {done} or more"
        )


def check_fits(ckpt_path: str | None, checkpoint: dict[str, Any] | None, module: Any) -> None:
    """The checkpoint to resume holds weights of this run's network, key for key and shape for shape: one line
    saying what differs, before Lightning's page of missing and unexpected keys."""
    if checkpoint is None:
        return
    saved = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
    if FROZEN_KEY in checkpoint:  # the frozen backbone is kept beside the checkpoint, not in it
        saved.update({k: tuple(v.shape) for k, v in module.state_dict().items() if k.startswith(FROZEN_PREFIX)})
    here = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing, unexpected = sorted(set(here) - set(saved)), sorted(set(saved) - set(here))
    fix = "resume it with the network settings it was trained with"
    if missing or unexpected:
        names = [f"{len(missing)} weights this network has are not in it (first: {missing[0]})"] if missing else []
        names += [f"{len(unexpected)} in it are not in this network (first: {unexpected[0]})"] if unexpected else []
        raise UserError(f"{ckpt_path} holds the weights of another network: {'; '.join(names)}; {fix}")
    for key, shape in here.items():
        if saved[key] != shape:
            raise UserError(
                f"{ckpt_path} does not fit this network: {key} is {list(saved[key])} in it but {list(shape)} here "
                f"(another number of classes or another size?); {fix}"
            )


def merge_overrides(saved: Sequence[str], new: Sequence[str]) -> list[str]:
    """``saved`` overrides with each key the ``new`` ones set replaced, then the ``new`` ones' other keys."""
    parser = OverridesParser.create()
    merged = {o.key_or_group: o for o in parser.parse_overrides(list(saved))}
    lines = {key: o.input_line for key, o in merged.items()}
    for override in parser.parse_overrides(list(new)):
        key, line = override.key_or_group, override.input_line
        old = merged.get(key)
        if old is not None and old.is_add() and not (override.is_add() or override.is_force_add()):
            line = f"++{line}"  # the saved run added this key; a plain override of it must add it too
        lines.pop(key, None)
        lines[key] = line
    return list(lines.values())


def own_checkpoint(path: str | Path, run_dir: Path) -> bool:
    """Whether ``path`` is a checkpoint of the run directory a run writes to (``<run_dir>/checkpoints/``)."""
    return Path(path).resolve().parent == (run_dir / "checkpoints").resolve()


def saved_overrides(checkpoint: dict[str, Any], path: str | Path) -> list[str] | None:
    """The overrides a checkpoint's run was composed with (None: it records none)."""
    saved = checkpoint[METADATA_KEY].get("overrides")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(o, str) for o in saved)):
        raise UserError(f"{path} records its run's overrides as {type(saved).__name__}, not a list of text")
    return saved


def resume_overrides(
    ckpt_path: str | None, run_dir: Path, overrides: Sequence[str], compose: Callable[[list[str]], Any]
) -> list[str] | None:
    """The overrides a resumed run composes its config from: the ones the checkpoint's run was composed
    with, under the ones given now. None when not resuming, or the checkpoint records none.

    A checkpoint of this run's own directory brings all of its run's overrides; any other brings only what
    :func:`~image_classification.trust.checkpoint_overrides` allows, and a warning names what it left out.

    Args:
        compose: the config ``python trainer.py <overrides>`` composes.
    """
    path = resolve_ckpt_path(ckpt_path, run_dir)
    if path is None:
        return None
    if not own_checkpoint(path, run_dir):
        log.info(f"Continuing {path} in {run_dir}: its weights and training state, not its best checkpoint so far")
    saved = saved_overrides(read_checkpoint(path), path)
    if saved is None:
        return None
    if not own_checkpoint(path, run_dir):
        saved, left_out = checkpoint_overrides(saved, overrides, CONFIG_DIR, compose)
        if left_out:
            log.warning(
                f"{path} is not a checkpoint of this run's directory, so only its run's group choices and plain "
                f"recipe values are used; left out: {', '.join(left_out)}. Give any you want on the command line"
            )
    return merge_overrides(saved, overrides)


def write_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file beside it, so a reader never sees half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_failed_attempt(run_dir: Path, log_dir: Path | None = None) -> None:
    """Remove what an attempt that stopped at its checks left (Hydra's log file, and the run directory it made
    for it, with its parents below ``log_dir`` that are left empty), so that a failed attempt writes nothing; a
    directory holding anything else is left as it is."""
    if not run_dir.is_dir() or any(path.name != "trainer.log" for path in run_dir.iterdir()):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's file handler writes to run_dir/trainer.log
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.resolve():
            root.removeHandler(handler)
            handler.close()
    with contextlib.suppress(OSError):
        (run_dir / "trainer.log").unlink(missing_ok=True)
        run_dir.rmdir()
        top = log_dir.resolve() if log_dir is not None else None
        parent = run_dir.resolve().parent
        while top is not None and top in parent.parents and not any(parent.iterdir()):  # log_dir itself stays
            parent.rmdir()
            parent = parent.parent


def write_run_records(run_dir: Path, config: dict[str, Any], overrides: Sequence[str] | None) -> None:
    """``config.yaml`` (the resolved config that runs) and ``overrides.yaml`` (what composed it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_atomically(run_dir / "overrides.yaml", yaml.safe_dump(list(overrides or []), sort_keys=False))


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    write_atomically(run_dir / "metrics.json", json.dumps(report, indent=2))


def checkpoint_paths(callbacks: dict[str, Any]) -> tuple[str | None, str | None]:
    """The best and the last checkpoint the ``best_checkpoint`` and ``last_checkpoint`` callbacks wrote.

    ``last_checkpoint`` is a ModelCheckpoint without a monitor that keeps one file, ``last.ckpt``,
    rewritten at the end of every epoch: its "best" path is that file.
    """
    return written_by(callbacks.get("best_checkpoint")), written_by(callbacks.get("last_checkpoint"))


def written_by(callback: Any) -> str | None:
    """A ModelCheckpoint's best checkpoint if it is a file in the callback's own folder: resumed from a checkpoint
    of another directory, Lightning restores the path the callback had there, which is not this run's."""
    path = getattr(callback, "best_model_path", None) if callback is not None else None
    if not path or callback.dirpath is None or "://" in str(path):
        return path or None
    return path if Path(path).resolve().parent == Path(callback.dirpath).resolve() else None


def checkpoint_val_metrics(path: str | None) -> tuple[dict[str, float], int | None]:
    """The ``val/*`` metrics of the weights a checkpoint holds, and its epoch."""
    if not path:
        return {}, None
    metadata = read_checkpoint(path)[METADATA_KEY]
    return dict(metadata.get("val_metrics", {})), metadata.get("epoch")
