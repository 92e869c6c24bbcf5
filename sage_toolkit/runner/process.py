"""The runner's children (fairseq-hydra-train, scripts/evaluate.py): started, streamed to their logs, stopped.

Children run in their own process groups. SIGINT (Ctrl-C), SIGTERM or SIGHUP stops every one of them (SIGTERM to the
group, SIGKILL after GRACE_S), starts nothing further and exits with 128 + the signal number (130 for Ctrl-C) and a
one-line message. A run that fails stops the runner the same way (the others resume on the next call) and prints the
run's name, its log and the end of its error; exit status 1. All of this is :func:`runner_session`, which the runners
(scripts/compare.py, scripts/study.py) work inside.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sage_toolkit.atomic import RUNNER_LOCK, check_not_in_use, locked, note_child
from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.evaluate import PROG as EVALUATE_PROG
from sage_toolkit.runner.console import complain, say

GRACE_S = 10.0  # seconds between SIGTERM and SIGKILL when children are stopped
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RunFailed(ToolkitError):
    """A child (training or evaluation) exited with a non-zero status; carries the run, the log and its end."""

    def __init__(self, name: str, what: str, returncode: int, logfile: Path, tail: list[str]):
        self.name, self.what, self.returncode, self.logfile, self.tail = name, what, returncode, logfile, tail
        lines = "".join(f"\n  | {line}" for line in tail) or "\n  | (no output)"
        super().__init__(f"[{name}] {what} failed (exit status {returncode}); log: {logfile}; its end:{lines}")


class Stopped(BaseException):
    """The runner is stopping (a signal, or a run failed): raised where a child would start or has been stopped.

    Control flow inside the runner, never shown to the user: :func:`runner_session` turns it into the exit."""


class Interrupted(Stopped):
    """SIGINT/SIGTERM/SIGHUP: raised in the main thread by the signal handler."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class Supervisor:
    """The runner's children: each started in its own process group, all stopped together.

    One per process (signals are per process). ``stop`` acts once: SIGTERM to every child's group, SIGKILL to what is
    left after GRACE_S; ``kill_all`` (a second Ctrl-C) sends SIGKILL at once."""

    def __init__(self):
        self.mutex = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it
        self.children: dict[int, subprocess.Popen] = {}
        self.stopping = False
        self.signum: int | None = None
        self.stopped = 0  # children running when the stop began
        self.timer: threading.Timer | None = None

    def reset(self) -> None:
        with self.mutex:
            if self.timer is not None:
                self.timer.cancel()
            self.children.clear()
            self.stopping, self.signum, self.stopped, self.timer = False, None, 0, None

    def check(self) -> None:
        """Raise Stopped if the runner is stopping (called before anything starts)."""
        if self.stopping:
            raise Stopped()

    def popen(self, command: list[str], lock_fd: int | None = None, **kwargs) -> subprocess.Popen:
        """Start a child in a new session (its own process group); ``lock_fd`` is inherited by it."""
        with self.mutex:
            self.check()
            pass_fds = () if lock_fd is None else (lock_fd,)
            proc = subprocess.Popen(command, start_new_session=True, pass_fds=pass_fds, **kwargs)
            self.children[proc.pid] = proc
            return proc

    def finish(self, proc: subprocess.Popen) -> int:
        """Wait for a child, kill whatever is left of its process group, reap it; its exit status."""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: the group id stays reserved
        with self.mutex:  # unregistered before it is reaped: kill_all never signals a group id that may be reused
            self._signal([proc.pid], signal.SIGKILL)  # stragglers (data loader workers, evaluate's fairseq-generate)
            self.children.pop(proc.pid, None)
        return proc.wait()

    def terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM to one child's process group (it is not reaped yet, so its group id is still its own)."""
        self._signal([proc.pid], signal.SIGTERM)

    def stop(self, signum: int | None = None) -> bool:
        """Start nothing more; send SIGTERM to every child's process group (SIGKILL to what is left after GRACE_S).
        Only the first call acts; it returns True."""
        with self.mutex:
            if self.stopping:
                return False
            self.stopping, self.signum = True, signum
            groups = list(self.children)
            self.stopped = len(groups)
            self._signal(groups, signal.SIGTERM)
            if groups:
                self.timer = threading.Timer(GRACE_S, self.kill_all, [groups])
                self.timer.daemon = True
                self.timer.start()
            return True

    def kill_all(self, groups: list[int] | None = None) -> None:
        """SIGKILL to the process groups of the children (of those given) that have not been reaped yet: an
        unreaped child keeps its group id reserved, so no other process can be hit."""
        with self.mutex:
            self._signal([pid for pid in self.children if groups is None or pid in groups], signal.SIGKILL)

    @staticmethod
    def _signal(groups: list[int], sig: int) -> None:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)


SUPERVISOR = Supervisor()


@contextlib.contextmanager
def signals_stop_children():
    """While inside: SIGINT/SIGTERM/SIGHUP stop every child and raise Interrupted in the main thread (once; a second
    signal only escalates to SIGKILL, so the cleanup is not interrupted). The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if SUPERVISOR.stop(signum):
            raise Interrupted(signum)
        SUPERVISOR.kill_all()  # already stopping: no second exception in the middle of the cleanup

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: a handler not set from Python


@contextlib.contextmanager
def worker_pool(workers: int):
    """A thread pool that, when its block ends with an exception, stops every child and cancels what has not begun."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        yield pool
    except BaseException:
        SUPERVISOR.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


@contextlib.contextmanager
def runner_session(prog: str, out: Path):
    """What compare.py and study.py run inside: signals stop every child, the output folder is locked.

    A signal ends it with one line on stderr (``PROG: interrupted by SIG...``) and SystemExit(128 + signal). A
    ToolkitError stops every other child and goes on to the command's wrapper (:func:`sage_toolkit.errors.run_command`
    prints ``PROG: error: ...``, exit 1); a failed run's message also says how many other runs were stopped."""
    SUPERVISOR.reset()
    with signals_stop_children():
        try:
            with locked(out, RUNNER_LOCK):
                check_not_in_use(out)
                yield
        except Stopped as e:
            SUPERVISOR.stop()
            signum = e.signum if isinstance(e, Interrupted) else SUPERVISOR.signum or signal.SIGINT
            n = SUPERVISOR.stopped
            complain(
                f"{prog}: interrupted by {signal.Signals(signum).name}: stopped {n} running child process group(s), "
                "started nothing further; run the same command again to resume"
            )
            raise SystemExit(128 + signum) from None
        except ToolkitError as e:
            SUPERVISOR.stop()
            if not (isinstance(e, RunFailed) and SUPERVISOR.stopped):
                raise
            head, newline, rest = str(e).partition("\n")
            head += f" (stopped {SUPERVISOR.stopped} other running child process group(s); they resume next time)"
            raise ToolkitError(head + newline + rest, exit_code=e.exit_code) from None


def run_logged(
    command: list[str],
    *,
    name: str,
    what: str,
    logfile: Path,
    env: dict[str, str],
    cwd: Path,
    lock_fd: int,
    status: Callable[[str], str | None],
) -> None:
    """Run a command in its own process group (it inherits the lock ``lock_fd``), append its output to ``logfile``,
    and show ``[NAME] STATUS`` for every line that ``status`` turns into one; a child's warnings
    (``sage-evaluate: WARNING ...``) go to stderr.

    Raises RunFailed (with the end of its output) if it fails, Stopped if the runner stopped it."""
    start = logfile.stat().st_size if logfile.exists() else 0
    with open(logfile, "a") as out:
        proc = SUPERVISOR.popen(
            command, lock_fd=lock_fd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace",
        )  # fmt: skip
        note_child(lock_fd, proc.pid)
        try:
            for line in proc.stdout:
                out.write(line)
                if line.startswith(f"{EVALUATE_PROG}: WARNING"):
                    complain(f"[{name}] {line.rstrip()}")
                    continue
                shown = status(line)
                if shown:
                    say(f"[{name}] {shown}")
        except BaseException:
            SUPERVISOR.terminate(proc)
            raise
        finally:
            code = SUPERVISOR.finish(proc)
    SUPERVISOR.check()  # stopped by the runner: not a failure of the run
    if code != 0:
        raise RunFailed(name, what, code, logfile, error_tail(logfile, start))


_WARNING = re.compile(r"^(?:\S.*|<frozen [^>]+>):\d+: \w*Warning\b")


def error_tail(logfile: Path, start: int, limit: int = 15) -> list[str]:
    """The last meaningful lines a child wrote to logfile after byte ``start``: from its last Python traceback if it
    has one, else what follows the last Python warning (fairscale and Hydra warn at every start); at most ``limit``."""
    try:
        with open(logfile, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.rstrip()[:400] for line in text.splitlines() if line.strip()]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        lines = lines[tracebacks[-1] :]
        return lines if len(lines) <= limit else [lines[0], "..."] + lines[-(limit - 2) :]
    begin = 0
    for i, line in enumerate(lines):
        if _WARNING.match(line):  # skip the warning: its message lines up to its indented source line
            end = next((j for j in range(i + 1, len(lines)) if re.match(r"^  \S", lines[j])), i)
            begin = end + 1
    return (lines[begin:] or lines)[-limit:]
