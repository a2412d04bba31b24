"""Writing files so that a reader, or a concurrent run, never sees half of one."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, named for this process, to write ``path``'s new content to. When the
    block ends without an error it replaces ``path`` in one step, so a reader finds the old file or the whole
    new one; on an error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the same suffix as `path`, for writers that go by it (torch.export.save wants `.pt2`)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with tmp.open("rb") as written:  # on the disk before it takes the name: a crash leaves old or new
            os.fsync(written.fileno())
        os.replace(tmp, path)
        sync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the system allows opening a directory)."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` writers left in ``directory`` when they were killed
    (their process is gone); returns them."""
    removed = []
    for tmp in Path(directory).glob(".*.*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[0].rsplit(".", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike) -> Iterator[None]:
    """One process at a time inside, across the processes of a machine (and of machines sharing a file system
    with working locks): the others wait at the door. ``lock_file`` is created, and left, for that."""
    import fcntl

    path = Path(lock_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
