"""Output written whole or not at all, and the folder locks that keep two writers apart: the one module both the
toolkit and data_prep use for both.

Files: a temporary file in the same folder, flushed to disk, then one rename (``os.replace``). An interrupted writer
leaves the previous file (or none) and no temporary file; readers never see half a file. A writer killed without
unwinding (SIGKILL; fairseq-train's default SIGTERM) leaves the previous file and its temporary one. Folders
(:func:`atomic_folder`): built under a temporary name beside their destination, renamed into place when complete.

Locks: flock on a file in the folder, which records who holds it. The runners lock their output folder while they work
in it (``OUT/.runner.lock``) and every run folder while a trainer or evaluation writes it (``OUT/.../seedN/.lock``,
held by the children too, so an orphaned trainer still holds it); data_prep locks ``.DEST.lock`` beside its output.
Another writer is refused, naming the folder and the PID that holds it. flock locks die with their processes, so a
lock whose holder died is free and is taken over (with a note).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sage_toolkit.errors import ToolkitError


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


def _fsync_tree(folder: Path) -> None:
    for parent, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(parent) / name)
        _fsync(Path(parent))


@contextlib.contextmanager
def atomic_folder(dest: Path, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Yield a fresh folder ``.NAME.partial`` beside ``dest`` (which must not exist); when the block ends normally its
    files are flushed to disk and it becomes ``dest`` in one rename, otherwise it is removed. The name is stable, so
    the leftovers of a writer killed without unwinding are removed (saying so) by the next one; hold ``dest``'s lock
    (:func:`locked`) around it."""
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.partial"
    if tmp.exists():
        log(f"removing the leftovers of an interrupted run: {tmp}")
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        os.replace(tmp, dest)  # same file system: one atomic rename
        _fsync(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------------
# Folder locks
# ----------------------------------------------------------------------------------------------------------------------

RUNNER_LOCK = ".runner.lock"  # in the output folder: held by the runner (compare.py or study.py) while it works there
RUN_LOCK = ".lock"  # in a run's folder: held by the runner and by the children that write the folder

_locks_mutex = threading.Lock()
_held: dict[Path, list] = {}  # lock file -> [fd, number of holders in this process]


class FolderLocked(ToolkitError):
    """A lock held by live processes: ``path`` (the lock file) and ``holders``, its (role, PID) lines."""

    def __init__(self, message: str, path: Path, holders: list[tuple[str, int]]):
        super().__init__(message)
        self.path, self.holders = path, holders

    def live_pids(self) -> list[int]:
        return [pid for _, pid in self.holders if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: it holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _holders(fd: int) -> list[tuple[str, int]]:
    """The (role, PID) lines of a lock file: the process that took it and the children it gave it to."""
    found = []
    for line in os.pread(fd, 1 << 16, 0).decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            found.append((parts[0], int(parts[1])))
    return found


def _refusal(path: Path, holders: list[tuple[str, int]]) -> FolderLocked:
    """The error for a folder locked by live processes: who holds it and how to stop them."""
    runners = [pid for role, pid in holders if role == "runner"]
    gone = "" if not runners or _alive(runners[0]) else ", which is no longer running"
    who, stop = [], []
    for role, pid in holders:
        if not _alive(pid):
            continue
        if role == "runner":
            who.append(f"PID {pid} (a runner)")
            stop.append(f"kill -INT {pid}")
        else:
            started = f"started by the runner PID {runners[0]}{gone}" if runners else "started by a runner"
            who.append(f"PID {pid} (a training or evaluation {started})")
            stop.append(f"kill -TERM -- -{pid}")
    message = (
        f"{path.parent} is in use: {', '.join(who) or 'a process that did not record its PID'} holds its lock "
        f"{path}; wait for it to finish" + (f" or stop it ({'; '.join(stop)})" if stop else "")
    )
    return FolderLocked(message, path, holders)


def acquire(
    directory: Path, name: str = RUN_LOCK, *, role: str = "runner", log: Callable[[str], None] | None = None
) -> int:
    """Lock ``directory/name`` (flock, never waits; re-entrant within this process) for a ``role`` (``runner``, or
    ``data_prep``); its file descriptor.

    Raises :class:`FolderLocked` naming the folder and the live PIDs that hold it. A lock file left by a dead holder is
    free (flock locks die with their processes) and is taken over with a note to ``log`` (default: the runner's
    console)."""
    path = (Path(directory) / name).absolute()
    with _locks_mutex:
        if path in _held:
            _held[path][1] += 1
            return _held[path][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders(fd)
            os.close(fd)
            raise _refusal(path, holders) from None
        stale = list(dict.fromkeys(pid for _, pid in _holders(fd)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{role} {os.getpid()}\n".encode(), 0)
        _held[path] = [fd, 1]
    if stale:
        if log is None:
            from sage_toolkit.runner.console import say as log
        log(f"{path.parent}: took over the lock left by PID {', '.join(map(str, stale))} (no longer running)")
    return fd


def release(directory: Path, name: str = RUN_LOCK) -> None:
    path = (Path(directory) / name).absolute()
    with _locks_mutex:
        entry = _held[path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[path]
            os.ftruncate(entry[0], 0)  # an empty lock file: released cleanly (a non-empty free one: its holder died)
            os.close(entry[0])


@contextlib.contextmanager
def locked(directory: Path, name: str = RUN_LOCK, **how):
    """``directory/name`` locked while inside (see :func:`acquire`, whose ``role`` and ``log`` ``how`` may give);
    yields the lock's file descriptor."""
    fd = acquire(directory, name, **how)
    try:
        yield fd
    finally:
        release(directory, name)


def note_child(fd: int, pid: int) -> None:
    """Record a child that inherited the lock, so that a refusal can name it after the runner is gone."""
    with _locks_mutex:
        os.pwrite(fd, f"child {pid}\n".encode(), os.fstat(fd).st_size)


def check_not_in_use(out: Path) -> None:
    """Refuse an output folder in which some run folder is still locked (e.g. a trainer orphaned by a killed runner)."""
    for lock in sorted(out.rglob(RUN_LOCK)):
        with locked(lock.parent, lock.name):
            pass
