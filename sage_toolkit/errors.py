"""The one user-facing error of the toolkit, and the wrapper every command runs its body in.

A :class:`ToolkitError` is a failure the user can fix (a missing file, a bad option, a run that failed): its message
names the option or file and what was wrong, and the command prints it as ``PROG: error: MESSAGE`` and exits with
``exit_code`` (1 unless the error says otherwise; 2 for usage errors, as argparse). Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ToolkitError(Exception):
    """A failure the user can fix; ``exit_code`` is the command's exit status (1, or 2 for a usage error)."""

    def __init__(self, message: str, *, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def complain(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: context managers remove temporary files, children are stopped


def run_command(prog: str, body: Callable[[], T], *, interrupted: str = "interrupted") -> T:
    """Run a command's body: a ToolkitError -> ``PROG: error: ...`` on stderr and SystemExit(exit_code); Ctrl-C ->
    ``PROG: INTERRUPTED`` and SystemExit(130); SIGTERM unwinds like Ctrl-C with status 143. Returns what body returns.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return body()
    except ToolkitError as e:
        complain(f"{prog}: error: {e}")
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        complain(f"{prog}: {interrupted}")
        raise SystemExit(130) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
