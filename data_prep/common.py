"""Shared plumbing for the dataset preparation scripts: checked input reading, atomic output, downloads.

Every user-facing failure raises :class:`DataPrepError` with a message that names the file or option at fault;
:func:`cli_main` turns it into ``<prog>: error: <message>`` on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from sage_toolkit.atomic import FolderLocked, acquire, atomic_folder, release
from sage_toolkit.errors import ToolkitError, run_command

COMPLETE_MARKER = "prep.json"  # written last into the output folder; its presence means "complete"


# A user-facing error (bad input, bad option, failed download; the message names what is wrong): the project's one
# error type, under the name these modules have always raised.
DataPrepError = ToolkitError


# ----------------------------------------------------------------------------------------------------------------------
# Reading input
# ----------------------------------------------------------------------------------------------------------------------


def find_file(folder: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` (each tried also with ``.gz``) that exists in ``folder``; a clear error otherwise."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    tried = ", ".join(f"{n}[.gz]" for n in names)
    raise DataPrepError(f"missing input file for {what}: none of {tried} in {folder}")


def read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file (``.gz`` is decompressed), without their line ends.

    Errors name the file: missing, empty, not gzip, invalid UTF-8 (with the line number and byte offset).
    """
    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"missing input file: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataPrepError(f"cannot read {path}: {e}") from e
    if not data.strip():
        raise DataPrepError(f"input file {path} is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        raise DataPrepError(f"{path} is not valid UTF-8: byte offset {e.start} (line {line_no}): {e.reason}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_parallel(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    """Both sides of a parallel corpus; their line counts must agree (the error names both files and counts)."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    check_same_length(src_path, src, tgt_path, tgt)
    return src, tgt


def check_same_length(src_path, src: Sequence[str], tgt_path, tgt: Sequence[str]) -> None:
    if len(src) != len(tgt):
        raise DataPrepError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")


def write_lines(path: Path, lines: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")


def check_lang_pair(src: str, tgt: str, supported: Sequence[tuple[str, str]], dataset: str) -> None:
    if (src, tgt) not in supported:
        choices = ", ".join(f"{s}-{t}" for s, t in supported)
        raise DataPrepError(
            f"unknown language pair {src}-{tgt} for {dataset} (--src {src} --tgt {tgt}); supported: {choices}"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Atomic output
# ----------------------------------------------------------------------------------------------------------------------


def read_manifest(dest: Path) -> dict | None:
    marker = dest / COMPLETE_MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(dest: Path, settings: dict, log: Callable[[str], None] = print) -> bool:
    """True (and says so) when ``dest`` is a completed output of the same settings: re-running is then a no-op.

    Raises when ``dest`` exists otherwise (other settings, or not a data_prep output), before any work is done.
    """
    dest = Path(dest).absolute()
    manifest = read_manifest(dest)
    if manifest is not None and manifest.get("settings") == settings:
        log(f"{dest} is already complete (same settings): nothing to do")
        return True
    if manifest is not None:
        raise DataPrepError(
            f"{dest} already holds data prepared with other settings; remove it or choose another --dest"
        )
    if dest.exists():
        raise DataPrepError(
            f"{dest} exists but is not a completed data_prep output; remove it or choose another --dest"
        )
    return False


@contextlib.contextmanager
def atomic_output(dest: Path, settings: dict, log: Callable[[str], None] = print) -> Iterator[Path | None]:
    """Yield a fresh temporary folder next to ``dest``; on success it is renamed to ``dest`` in one step
    (:func:`sage_toolkit.atomic.atomic_folder`).

    - ``dest`` complete (its ``prep.json`` records the same ``settings``): yields ``None``, nothing is done.
    - ``dest`` exists otherwise (other settings, or not ours): an error that says so; nothing is touched.
    - A leftover temporary folder from an interrupted run is deleted first, so every run starts clean; on any
      failure the temporary folder is deleted and ``dest`` does not appear.
    - A lock file (``flock``, released by the kernel if the process dies; it names its holder) refuses two runs on
      the same ``dest``; it is removed when the run ends.
    """
    dest = Path(dest).absolute()
    if is_complete(dest, settings, log):  # raises if dest exists with other settings or is not ours
        yield None
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock_name = f".{dest.name}.lock"
    with _dest_locked(dest, lock_name, log):
        try:
            if is_complete(dest, settings, log):  # a concurrent run finished before we got the lock
                yield None
                return
            with atomic_folder(dest, log) as tmp:
                yield tmp
                if read_manifest(tmp) is None:
                    raise RuntimeError(f"internal error: {tmp} was not completed with write_manifest()")
        finally:
            with contextlib.suppress(OSError):
                (dest.parent / lock_name).unlink()  # while still held: no leftover lock file


@contextlib.contextmanager
def _dest_locked(dest: Path, lock_name: str, log: Callable[[str], None]) -> Iterator[None]:
    """``dest``'s lock for this run; the refusal keeps data_prep's words and adds who holds it."""
    try:
        acquire(dest.parent, lock_name, role="data_prep", log=log)
    except FolderLocked as e:
        pids = e.live_pids()
        holder = f"; held by PID {', '.join(map(str, pids))}" if pids else ""
        raise DataPrepError(f"another data_prep run is writing {dest} (lock {e.path}{holder})") from None
    try:
        yield
    finally:
        release(dest.parent, lock_name)


def write_manifest(folder: Path, settings: dict, info: dict) -> None:
    """Write the completion marker; call it as the very last step inside the temporary folder."""
    record = {
        "settings": settings,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **info,
    }
    (folder / COMPLETE_MARKER).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# Downloads and archives
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileKind:
    """What a downloaded file must be: a description for messages, and a test of the file's first bytes."""

    description: str
    matches: Callable[[Path], bool]


GZIP_MAGIC = b"\x1f\x8b"


def _starts_with_gzip_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def _is_tar_gz(path: Path) -> bool:
    """gzip data that starts with a valid tar header (tarfile checks the first member's header and checksum)."""
    if not _starts_with_gzip_magic(path):
        return False
    try:
        with tarfile.open(path, "r:gz") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


GZIP = FileKind("a gzip file", _starts_with_gzip_magic)
TAR_GZ = FileKind("a gzip-compressed tar archive", _is_tar_gz)

_HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_MAGIC_KINDS = (  # (prefix, what a file starting with it is), for messages only
    (GZIP_MAGIC, "a gzip file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ\x00", "an xz file"),
)


def describe_file(path: Path) -> str:
    """What ``path`` looks like from its first bytes ("an HTML page titled '...'", "a zip archive", ...): said in the
    error when it is not what was expected."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        return "an empty file"
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")) or b"<html" in start[:1024]:
        title = _HTML_TITLE.search(head)
        if title:
            text = " ".join(title.group(1).decode("utf-8", "replace").split())
            return f"an HTML page titled {text!r}"
        return "an HTML page"
    for magic, what in _MAGIC_KINDS:
        if head.startswith(magic):
            return what
    if head[257:262] == b"ustar":
        return "an uncompressed tar archive"
    if b"\0" not in head:
        try:
            head[:-4].decode("utf-8")  # the last bytes may cut a multi-byte character
            return "a text file"
        except UnicodeDecodeError:
            pass
    return "binary data of an unknown kind"


def wrong_kind(path: Path, kind: FileKind) -> str | None:
    """None when ``path`` is ``kind``; else what it is instead, with its first bytes (for the error message)."""
    if kind.matches(path):
        return None
    with open(path, "rb") as f:
        head = f.read(48)
    return f"{describe_file(path)}, not {kind.description}: first bytes {head!r}"


class _FormParser(HTMLParser):
    """Collects the action and hidden inputs of the first form (Google Drive's "download anyway" page)."""

    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value") or ""


def _form_target(page_url: str, page: str) -> str:
    """The URL that submitting the page's first form (GET, its hidden fields) requests, as a browser builds it: the
    action resolved against the page's URL, its query replaced by the fields."""
    form = _FormParser()
    form.feed(page)
    if not form.action:
        raise DataPrepError(f"{page_url} returned a web page instead of the file")
    target = urllib.parse.urlsplit(urllib.parse.urljoin(page_url, form.action))
    if target.scheme not in ("http", "https"):
        raise DataPrepError(
            f"{page_url} returned a web page whose download form points to {form.action!r}, not to a web address"
        )
    return urllib.parse.urlunsplit(target._replace(query=urllib.parse.urlencode(form.fields), fragment=""))


def download(url: str, dest: Path, kind: FileKind, log: Callable[[str], None] = print) -> Path:
    """Download ``url`` to ``dest`` (via ``dest.part`` and a rename); it must be ``kind`` (e.g. :data:`TAR_GZ`).

    The download is checked by its first bytes as soon as it has arrived: anything else (an HTML page from a proxy,
    a login or Google Drive's warning) is deleted and the error says what it was. An existing ``dest`` (an earlier
    run's download) is reused only if it passes the same check; otherwise it is deleted and downloaded again.
    Google Drive answers large files with an HTML "can't scan for viruses" page; its form is followed once.
    """
    dest = Path(dest)
    if dest.is_file():
        problem = wrong_kind(dest, kind)
        if problem is None:
            log(f"using the earlier download {dest}")
            return dest
        log(f"the earlier download {dest} is {problem}; deleting it and downloading again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log(f"downloading {url} -> {dest}")
    try:
        for _attempt in range(2):
            req = urllib.request.Request(url, headers={"User-Agent": "fairseq-sage-data-prep"})
            with urllib.request.urlopen(req, timeout=60) as resp, open(part, "wb") as out:
                ctype = resp.headers.get("Content-Type", "")
                if "text/html" in ctype and "drive" in url:
                    url = _form_target(resp.geturl(), resp.read().decode("utf-8", "replace"))
                    continue
                shutil.copyfileobj(resp, out, length=1 << 20)
                break
        else:
            raise DataPrepError(f"{url} kept returning a web page instead of the file")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        part.unlink(missing_ok=True)
        raise DataPrepError(
            f"download of {url} failed ({e}); download it yourself and pass the folder with --local-dir"
        ) from e
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    problem = wrong_kind(part, kind)
    if problem is not None:
        part.unlink()
        raise DataPrepError(
            f"download of {url} gave {problem} (deleted); download it yourself and pass the folder with --local-dir"
        )
    os.replace(part, dest)
    return dest


def extract_tar(archive: Path, into: Path) -> Path:
    """Extract a .tgz/.tar.gz safely (no absolute paths or ``..``) into ``into``; return ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        what = f" ({describe_file(archive)})" if archive.is_file() else ""
        raise DataPrepError(f"cannot extract {archive}{what}: {e}") from e
    return into


def cli_main(prog: str, run: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``run(argv)`` through the toolkit's command wrapper (a :class:`DataPrepError` becomes ``prog: error: ...`` on
    stderr and exit status 1; Ctrl-C 130) and return the exit status instead of raising it."""
    try:
        return run_command(prog, lambda: run(argv) or 0, interrupted="interrupted; no output was left behind")
    except SystemExit as e:
        return e.code
