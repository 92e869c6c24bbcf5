"""Lines printed by a runner whose runs work in parallel threads: each line whole, stdout flushed before stderr."""

from __future__ import annotations

import sys
import threading

from sage_toolkit import errors

_print_lock = threading.Lock()


def say(message: str) -> None:
    """A progress line on stdout."""
    with _print_lock:
        print(message, flush=True)


def complain(message: str) -> None:
    """A message for stderr (errors, warnings, the interruption), after what is already on stdout."""
    with _print_lock:
        sys.stdout.flush()
        errors.complain(message)
