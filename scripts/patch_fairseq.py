#!/usr/bin/env python
"""Make the installed fairseq 0.12.2 work on Python 3.11 and torch >= 2.6, idempotently.

fairseq's last release predates both. Three fixes (see ../shared/docs/FAIRSEQ.md for the symptoms):

1. Python 3.11 rejects dataclass fields whose default is a dataclass *instance*
   (``common: CommonConfig = CommonConfig()``): they become ``field(default_factory=CommonConfig)``, and
   ``hydra_init`` learns to call the factory instead of reading ``.default`` (now MISSING).
2. torch >= 2.6 loads with ``weights_only=True``; fairseq checkpoints pickle an ``argparse.Namespace``.
   fairseq's own ``torch.load`` calls on checkpoints (and on the pickled objects it broadcasts between
   ranks) pass ``weights_only=False``: these are the user's own files.
3. After a checkpoint load, TransformerEncoderLayer switches to a BetterTransformer fast path that fails on
   new torch ("Mask Type should be defined"); it is kept off.
4. When training stops mid-epoch (--max-update), fairseq's batch-prefetching daemon thread is still inside torch at
   interpreter exit and the process aborts (exit -6) after saving; the threads are stopped and joined at exit.

Usage: ``python scripts/patch_fairseq.py [--check]``. With ``--check`` nothing is written and the exit status
says whether every fix is in place. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import re
import sys

# name: Type = Type()      ->  name: Type = field(default_factory=Type)
_INSTANCE_DEFAULT = re.compile(r"^(\s+\w+: (\w+) = )\2\(\)\s*$", re.MULTILINE)
# field(default=Type())    ->  field(default_factory=Type)
_FIELD_INSTANCE_DEFAULT = re.compile(r"field\(\s*default=(\w+)\(\)")

_HYDRA_INIT_OLD = "        v = FairseqConfig.__dataclass_fields__[k].default\n"
_HYDRA_INIT_NEW = (
    "        _f = FairseqConfig.__dataclass_fields__[k]\n"
    "        v = _f.default_factory() if callable(_f.default_factory) else _f.default  # fairseq-sage patch\n"
)

# (relative path, old text, new text): literal edits, each applied once.
_LITERAL_EDITS = [
    ("dataclass/initialize.py", _HYDRA_INIT_OLD, _HYDRA_INIT_NEW),
    (
        "checkpoint_utils.py",
        'state = torch.load(f, map_location=torch.device("cpu"))',
        'state = torch.load(f, map_location=torch.device("cpu"), weights_only=False)',
    ),
    (
        "checkpoint_utils.py",
        "new_state = torch.load(\n            f,\n",
        "new_state = torch.load(\n            f,\n            weights_only=False,\n",
    ),
    (
        "distributed/utils.py",
        'obj = torch.load(buffer, map_location="cpu")',
        'obj = torch.load(buffer, map_location="cpu", weights_only=False)',
    ),
    # 4. a daemon thread that prefetches batches (BufferedIterator) is still inside torch when the interpreter exits
    #    mid-epoch (training stopped by --max-update): the process aborts ("terminate called without an active
    #    exception", exit -6) after everything was saved. Stop and join those threads at exit instead.
    (
        "data/iterators.py",
        "        self.count = 0\n        self.cuda_device = cuda_device\n",
        "        self.count = 0\n        self.cuda_device = cuda_device\n"
        "        self.stopping = False  # fairseq-sage patch: set at interpreter exit\n",
    ),
    (
        "data/iterators.py",
        "            for item in self._source:\n                self._queue.put(item)\n",
        "            for item in self._source:\n                if self.stopping:  # fairseq-sage patch\n"
        "                    return\n                self._queue.put(item)\n",
    ),
    (
        "data/iterators.py",
        "        self._consumer.daemon = True\n        self._consumer.start()\n",
        "        self._consumer.daemon = True\n        self._consumer.start()\n"
        "        _live_consumers.add(self._consumer)  # fairseq-sage patch\n",
    ),
    (
        "data/iterators.py",
        "class BackgroundConsumer(Thread):\n",
        "import atexit as _atexit  # fairseq-sage patch: stop prefetching threads before the interpreter exits\n"
        "import weakref as _weakref\n\n_live_consumers = _weakref.WeakSet()\n\n\n"
        "@_atexit.register\n"
        "def _stop_background_consumers():\n"
        "    for consumer in list(_live_consumers):\n"
        "        consumer.stopping = True\n"
        "        while consumer.is_alive():\n"
        "            try:  # unblock a put() on a full queue\n"
        "                while True:\n"
        "                    consumer._queue.get_nowait()\n"
        "            except queue.Empty:\n"
        "                pass\n"
        "            consumer.join(timeout=0.1)\n\n\n"
        "class BackgroundConsumer(Thread):\n",
    ),
    (
        "modules/transformer_layer.py",
        "        self.load_to_BT = True\n",
        "        self.load_to_BT = False  # fairseq-sage patch: BetterTransformer path breaks on torch >= 2\n",
    ),
]


def fairseq_root() -> pathlib.Path:
    spec = importlib.util.find_spec("fairseq")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("patch_fairseq: fairseq is not installed in this Python (" + sys.executable + ")")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def _fix_dataclass_defaults(text: str) -> str:
    text = _INSTANCE_DEFAULT.sub(lambda m: f"{m.group(1)}field(default_factory={m.group(2)})\n", text)
    text = _FIELD_INSTANCE_DEFAULT.sub(lambda m: f"field(default_factory={m.group(1)}", text)
    if "field(default_factory=" in text and not re.search(r"^from dataclasses import .*\bfield\b", text, re.M):
        text = re.sub(r"^from dataclasses import ", "from dataclasses import field, ", text, count=1, flags=re.M)
    return text


def pending_changes(root: pathlib.Path) -> dict[pathlib.Path, str]:
    """Return {file: patched text} for every file that still needs a fix."""
    changes: dict[pathlib.Path, str] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if _INSTANCE_DEFAULT.search(text) or _FIELD_INSTANCE_DEFAULT.search(text):
            changes[path] = _fix_dataclass_defaults(text)
    for rel, old, new in _LITERAL_EDITS:
        path = root / rel
        text = changes.get(path, path.read_text(encoding="utf-8"))
        if new in text:
            continue
        if old not in text:
            sys.exit(f"patch_fairseq: {path} does not contain the expected code; is this fairseq 0.12.2?")
        changes[path] = text.replace(old, new)
    return changes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether fixes are missing")
    args = parser.parse_args()
    root = fairseq_root()
    changes = pending_changes(root)
    if args.check:
        for path in changes:
            print(f"patch_fairseq: not patched: {path}")
        return 1 if changes else 0
    for path, text in changes.items():
        tmp = path.with_suffix(".py.sage-tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)  # atomic: an interrupted run never leaves a half-written module
        for cached in path.parent.glob(f"__pycache__/{path.stem}.*.pyc"):
            cached.unlink()
    print(f"patch_fairseq: {len(changes)} file(s) patched in {root}" if changes else "patch_fairseq: already patched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
