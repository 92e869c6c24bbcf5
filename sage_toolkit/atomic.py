"""Files written whole or not at all: a temporary file in the same folder, flushed to disk, then one rename
(``os.replace``).

An interrupted writer leaves the previous file (or none) and no temporary file; readers never see half a file. A writer
killed without unwinding (SIGKILL; fairseq-train's default SIGTERM) leaves the previous file and its temporary one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, *, stable_temp: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally it is flushed to disk and becomes ``path``
    (usual permissions: mkstemp's 0600 would surprise), otherwise it is removed. The parent folder is created if
    missing.

    ``stable_temp``: the temporary file is ``NAME.tmp`` instead of a fresh random name, for a file with one writer that
    a signal may kill without unwinding (fairseq-train's checkpoints): such a writer leaves at most one ``NAME.tmp``
    per file, and the next write of the file replaces it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if stable_temp:
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)  # the data is on disk before the name points at it (a crash never leaves an empty file)
        os.replace(tmp, path)
        _fsync(path.parent)  # ... and the rename itself
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return Path(path)


def savefig_atomic(fig, path: Path, **kwargs) -> Path:
    """A matplotlib figure saved atomically (format from the suffix)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
    return path
