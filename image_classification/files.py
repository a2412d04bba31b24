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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
