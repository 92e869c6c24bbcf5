"""fairseq checkpoint files read without running code, written whole or not at all, and resumed from safely: the one
implementation that the toolkit and the patched fairseq (``sage_toolkit/install/patch_fairseq.py``) both call.
docs/checkpoints.md is the user's account of it.

Reading (:func:`load_checkpoint_file`): ``torch.load(weights_only=True)`` with :func:`allowed_globals`, exactly the
Python globals that the fairseq 0.12.2 checkpoints written here hold beside torch's own (found by loading real ones:
fairseq-train with every optimizer and lr scheduler of the plugin and fairseq's adam, --amp and
--memory-efficient-fp16, fairseq-hydra-train with the project's configs and --eval-bleu, the toolkit's averages, a
fairseq < 0.10 style checkpoint with ``args``). A file whose pickle needs anything else is refused before any of it
runs (:class:`UnsafeCheckpointError`, naming the file, the globals and the opt-in); ``SAGE_TRUST_CHECKPOINTS=1`` in the
environment loads a trusted file in full. An empty, cut short or otherwise unreadable file is an
:class:`UnreadableCheckpointError` naming it.

Writing (:func:`save_checkpoint_file`, :func:`copy_checkpoint_file`): ``NAME.tmp`` in the same folder, flushed to disk,
renamed into place (:func:`sage_toolkit.atomic.atomic_path`): a save interrupted at any moment leaves the previous file.

Resuming (:func:`resume_point`): an unreadable resume point is named, and the newest intact checkpoint of its folder is
resumed from (fairseq's default ``checkpoint_last.pt``) or named as the remedy (an explicit restore file).

Both errors are :class:`~sage_toolkit.errors.ToolkitError`: the toolkit's commands print them as one line. In a fairseq
command line (fairseq-train, fairseq-generate, ...) the first one raised installs a ``sys.excepthook`` that prints an
uncaught ToolkitError as one line too, instead of a traceback (other exceptions keep theirs).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import sys
import zipfile
from pathlib import Path

from sage_toolkit.atomic import atomic_path
from sage_toolkit.errors import ToolkitError

TRUST_VARIABLE = "SAGE_TRUST_CHECKPOINTS"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6; older files are a bare pickle stream

logger = logging.getLogger(__name__)


class CheckpointError(ToolkitError):
    """A checkpoint file that cannot be loaded; the message names the file and why."""


class UnsafeCheckpointError(CheckpointError):
    """The file's pickle needs globals outside :func:`allowed_globals`: loading it in full could run code."""


class UnreadableCheckpointError(CheckpointError):
    """The file is missing, empty, cut short or not a torch checkpoint."""


def allowed_globals() -> list:
    """The globals a fairseq 0.12.2 checkpoint written here holds beyond torch's own safe set, each seen in real ones
    (docs/checkpoints.md lists which): fairseq-train's ``cfg.model`` (and an old checkpoint's ``args``) is an
    ``argparse.Namespace``; the validation BLEU statistics of ``--eval-bleu`` (``extra_state.metrics``) are int64 numpy
    arrays, pickled by numpy 2 as ``_reconstruct``, ``ndarray``, ``dtype`` and the dtype's class."""
    import argparse

    import numpy as np
    from numpy._core.multiarray import _reconstruct

    return [argparse.Namespace, _reconstruct, np.ndarray, np.dtype, np.dtypes.Int64DType]


def trust_requested() -> bool:
    """Whether ``SAGE_TRUST_CHECKPOINTS=1`` asks to load checkpoints in full (unset, empty or 0: no)."""
    value = os.environ.get(TRUST_VARIABLE, "").strip()
    if value in ("", "0"):
        return False
    if value == "1":
        return True
    _raise(ToolkitError(f"{TRUST_VARIABLE} must be 1 (load checkpoints in full) or 0/unset, got {value!r}"))


def load_checkpoint_file(path, *, mmap: bool = False):
    """The object ``torch.save`` wrote to ``path``, on the CPU, loaded without running any of it (module docstring).

    ``mmap``: map the tensors' storage instead of reading it (cheap, to look at the rest; torch's zip format only)."""
    import torch

    path = Path(path)
    header = _header(path)
    options = {"map_location": "cpu", "mmap": mmap and header == ZIP_MAGIC}
    if trust_requested():
        logger.warning("loading %s in full (%s=1): its pickle can run code", path, TRUST_VARIABLE)
        try:
            return torch.load(path, weights_only=False, **options)
        except Exception as error:  # noqa: BLE001 - any failure to read is the file's
            _raise(UnreadableCheckpointError(_unreadable(path, header, error)))
    allowed = allowed_globals()
    with torch.serialization.safe_globals(allowed):
        try:
            return torch.load(path, weights_only=True, **options)
        except pickle.UnpicklingError as error:
            unsafe = _unsafe_globals(path, header, error)
            if not unsafe:
                _raise(UnreadableCheckpointError(_unreadable(path, header, error)))
        except Exception as error:  # noqa: BLE001 - a zip or pickle that cannot be read: the file is bad
            _raise(UnreadableCheckpointError(_unreadable(path, header, error)))
    _raise(
        UnsafeCheckpointError(
            f"refused to load checkpoint {path}: its pickle needs {', '.join(unsafe)}, beyond the globals that "
            f"fairseq checkpoints hold (loading it in full could run code). If you trust this file, set "
            f"{TRUST_VARIABLE}=1 in the environment to load it in full (docs/checkpoints.md)"
        )
    )


def _header(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            header = f.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        _raise(UnreadableCheckpointError(f"checkpoint {path} does not exist"))
    except OSError as error:
        _raise(UnreadableCheckpointError(f"cannot read checkpoint {path}: {error}"))
    if not header:
        _raise(UnreadableCheckpointError(f"cannot read checkpoint {path}: it is empty (0 bytes)"))
    return header


def _unreadable(path: Path, header: bytes, error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch's weights-only message opens with advice to load in full: keep only what went wrong
    detail = next((line for line in lines if not line.startswith(_TORCH_ADVICE)), lines[0] if lines else "")
    detail = detail.split(". ")[0]  # torch's first sentence says it; the rest is generic advice
    if header != ZIP_MAGIC:
        what = "not a torch checkpoint, or a damaged one"
    elif not zipfile.is_zipfile(path):  # a zip archive ends with its directory: a file cut short has none
        what = "cut short or corrupt"
    else:
        what = "damaged"
    return f"cannot read checkpoint {path} ({path.stat().st_size:,} bytes): {what} ({type(error).__name__}: {detail})"


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unsafe_globals(path: Path, header: bytes, error: Exception) -> list[str]:
    """The globals outside the allow-list that the file's pickle names (call inside ``safe_globals``)."""
    import torch

    if header == ZIP_MAGIC:
        try:  # reads the pickle's opcodes; runs nothing
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - unreadable: torch's message below
            found = []
        if found:
            return sorted(found)
    # an old non-zip file, or a global that only the unpickling met (a class whose instance it was asked to build)
    pattern = r"GLOBAL (\S+) (?:whose module|was not an allowed)|via `add_safe_globals`,? but got <class '([^']+)'>"
    return sorted({a or b for a, b in re.findall(pattern, str(error))})


def save_checkpoint_file(obj, path) -> None:
    """``torch.save(obj)`` to ``path`` under the temporary name ``path.tmp``, flushed and renamed into place."""
    import torch

    with atomic_path(Path(path), stable_temp=True) as tmp:
        torch.save(obj, tmp)


def copy_checkpoint_file(source, path) -> None:
    """``source`` copied to ``path`` the same way: never a truncated ``path``, whenever the copy is interrupted."""
    with atomic_path(Path(path), stable_temp=True) as tmp:
        shutil.copyfile(source, tmp)


def _fairseq_checkpoint_name(suffix: str) -> re.Pattern:
    """fairseq's names for a training checkpoint (``checkpoint_utils.save_checkpoint``): per epoch or update (the file
    a save writes first), last, best, the kept best ones; not the toolkit's averages (``checkpoint.avgN.pt``, which
    hold no optimizer state)."""
    return re.compile(r"checkpoint(?:(?P<numbered>\d+|_\d+_\d+)|_last|_best|\.best_.+)" + re.escape(suffix) + r"\.pt")


def newest_intact_checkpoint(folder, *, exclude=(), suffix: str = "") -> tuple[Path, int] | None:
    """(path, updates) of the fairseq checkpoint in ``folder`` with the most updates that loads (looked at with the
    tensors mapped, not read), ``exclude`` aside; None if there is none. Unsafe files are never chosen."""
    name = _fairseq_checkpoint_name(suffix)
    excluded = {Path(p).resolve() for p in exclude}
    best = None
    for path in sorted(Path(folder).iterdir()):
        match = name.fullmatch(path.name)
        if not match or path.resolve() in excluded or not path.is_file():
            continue
        try:
            state = load_checkpoint_file(path, mmap=True)
            updates = int(state["optimizer_history"][-1]["num_updates"])
        except (CheckpointError, KeyError, IndexError, TypeError, ValueError):
            continue
        key = (updates, bool(match["numbered"]), path.stat().st_mtime)  # a save's copies: the file it wrote first
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else (best[1], best[0][0])


def resume_point(path, *, fallback: bool, suffix: str = "") -> Path:
    """The checkpoint to resume training from when fairseq is asked to resume from ``path``.

    A missing ``path`` is returned as it is (fairseq starts afresh). A readable one is returned. An unreadable one
    (empty, cut short) is named: with ``fallback`` (fairseq's default ``checkpoint_last.pt``) the newest intact
    checkpoint of its folder is returned instead, with a warning saying which; otherwise, or when there is none, an
    UnreadableCheckpointError names the remedy. An unsafe file is refused (UnsafeCheckpointError)."""
    path = Path(path)
    if not path.is_file():
        return path
    try:
        load_checkpoint_file(path, mmap=True)
        return path
    except UnreadableCheckpointError as error:
        problem = str(error)
    found = newest_intact_checkpoint(path.parent, exclude=[path], suffix=suffix)
    if found is None:
        _raise(
            UnreadableCheckpointError(
                f"{problem}; {path.parent} holds no other intact checkpoint to resume from: move {path.name} aside "
                "to train from the start"
            )
        )
    other, updates = found
    if fallback:
        logger.warning(
            "%s; resuming from %s (update %d), the newest intact checkpoint in %s", problem, other, updates, path.parent
        )
        return other
    _raise(
        UnreadableCheckpointError(
            f"{problem}. The newest intact checkpoint in {path.parent} is {other.name} (update "
            f"{updates}): resume from it with --restore-file {other} (checkpoint.restore_file={other})"
        )
    )


def exit_if_toolkit_error(error: BaseException) -> None:
    """In a fairseq command line that catches exceptions itself (fairseq-hydra-train: Hydra prints a traceback): a
    ToolkitError is printed as one line and the command exits with status 1; anything else returns."""
    if isinstance(error, ToolkitError):
        _print_error(error)
        raise SystemExit(1) from None


def _raise(error: ToolkitError):
    """Raise ``error``; in a fairseq command an uncaught ToolkitError is then printed as one line (module docstring).
    Any other process (the toolkit's commands print it themselves, a user's Python) keeps its excepthook."""
    if _program().startswith("fairseq-") and not getattr(sys.excepthook, "_prints_toolkit_errors", False):
        sys.excepthook = _one_line_hook(sys.excepthook)
    raise error from None  # the message says what is wrong; torch's own long one would bury it


def _one_line_hook(previous):
    def hook(exc_type, exc, tb):
        if isinstance(exc, ToolkitError):
            _print_error(exc)  # the interpreter then exits with status 1, as after any uncaught exception
        else:
            previous(exc_type, exc, tb)

    hook._prints_toolkit_errors = True
    return hook


def _print_error(error: ToolkitError) -> None:
    print(f"{_program()}: error: {error}", file=sys.stderr, flush=True)


def _program() -> str:
    """``fairseq-train`` for ``.../bin/fairseq-train`` and for ``python -m fairseq_cli.train``."""
    script = Path(sys.argv[0] if getattr(sys, "argv", None) and sys.argv[0] else "python")
    if script.parent.name == "fairseq_cli":
        return "fairseq-" + script.stem.replace("_", "-")
    return script.name
