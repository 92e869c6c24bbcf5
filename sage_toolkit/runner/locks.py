"""Folder locks of the runners: flock on a file in the folder, which records who holds it.

The output folder is locked while a runner works in it (``OUT/.runner.lock``) and every run folder while a trainer or
evaluation writes it (``OUT/.../seedN/.lock``, held by the children too, so an orphaned trainer still holds it):
another runner refuses, naming the folder and the PID that holds it. flock locks die with their processes, so a lock
whose holder died is free and is taken over (with a note).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.runner.console import say

RUNNER_LOCK = ".runner.lock"  # in the output folder: held by the runner (compare.py or study.py) while it works there
RUN_LOCK = ".lock"  # in a run's folder: held by the runner and by the children that write the folder

_locks_mutex = threading.Lock()
_held: dict[Path, list] = {}  # lock file -> [fd, number of holders in this process]


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
    """The (role, PID) lines of a lock file: the runner that took it and the children it gave it to."""
    found = []
    for line in os.pread(fd, 1 << 16, 0).decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            found.append((parts[0], int(parts[1])))
    return found


def _refusal(path: Path, holders: list[tuple[str, int]]) -> ToolkitError:
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
    return ToolkitError(
        f"{path.parent} is in use: {', '.join(who) or 'a process that did not record its PID'} holds its lock "
        f"{path}; wait for it to finish" + (f" or stop it ({'; '.join(stop)})" if stop else "")
    )


def acquire(directory: Path, name: str = RUN_LOCK) -> int:
    """Lock ``directory/name`` (flock, never waits; re-entrant within this process); its file descriptor.

    Raises ToolkitError naming the folder and the live PIDs that hold it. A lock file left by a dead holder is free
    (flock locks die with their processes) and is taken over with a note."""
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
        os.pwrite(fd, f"runner {os.getpid()}\n".encode(), 0)
        _held[path] = [fd, 1]
    if stale:
        say(f"{path.parent}: took over the lock left by PID {', '.join(map(str, stale))} (no longer running)")
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
def locked(directory: Path, name: str = RUN_LOCK):
    """``directory/name`` locked while inside (see :func:`acquire`); yields the lock's file descriptor."""
    fd = acquire(directory, name)
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
