#!/usr/bin/env python
"""Make the installed fairseq 0.12.2 work on Python 3.11 and torch >= 2.6, idempotently.

fairseq's last release predates both. The fixes (../shared/docs/FAIRSEQ.md has the symptoms of the first three):

1. Python 3.11 rejects dataclass fields whose default is a dataclass *instance*
   (``common: CommonConfig = CommonConfig()``): they become ``field(default_factory=CommonConfig)``, and
   ``hydra_init`` learns to call the factory instead of reading ``.default`` (now MISSING).
2. Checkpoints are loaded without running code from them, and written whole or not at all
   (``sage_toolkit/checkpoint_io.py``, the toolkit's own implementation, imported from the installed project;
   docs/checkpoints.md). fairseq's checkpoint loads (training's restore file, generation's ``--path``, the EMA
   load) use its ``weights_only=True`` load with the allow-list of the globals fairseq checkpoints hold; a file that
   needs more is refused, naming the opt-in ``SAGE_TRUST_CHECKPOINTS=1`` for a trusted one. (Earlier versions of this
   patch passed ``weights_only=False`` there, running whatever a checkpoint's pickle asked for: no longer.) Every
   checkpoint file a save writes (the first one, and its copies to ``checkpoint_last.pt``, ``checkpoint_best.pt``,
   ``checkpoint.best_*.pt``, which fairseq overwrote in place) goes to ``NAME.tmp`` and is renamed into place; a
   resume whose ``checkpoint_last.pt`` is unreadable resumes from the newest intact checkpoint and says so (an
   explicit restore file is refused with that remedy). A refused or unreadable checkpoint is one line in fairseq's
   command lines (fairseq-hydra-train included, whose Hydra printed a traceback), not a traceback. The objects fairseq
   pickles and broadcasts between the ranks of one job are unpickled in full as before: they come from another rank
   of the same job, not from a file (a checkpoint among them was loaded safely by rank 0 first). The patched code
   imports the project's module rather than carrying a copy: one implementation, current with an editable install,
   and a fairseq without the project fails at its first checkpoint load instead of loading unsafely.
3. After a checkpoint load, TransformerEncoderLayer switches to a BetterTransformer fast path that fails on
   new torch ("Mask Type should be defined"); it is kept off.
4. When training stops mid-epoch (--max-update), fairseq's batch-prefetching daemon thread is still inside torch at
   interpreter exit and the process aborts (exit -6) after saving; the threads are stopped and joined at exit.
5. ``fairseq-train --optimizer NAME --help`` printed the help before adding the options of the chosen components
   (model, task, criterion, optimizer, lr scheduler, ...): no ``--adam-betas``, no ``--sage-*``. The first of
   ``parse_args_and_arch``'s two parses now ignores ``-h``/``--help``, and the second, complete one prints the help.
6. fairseq imports a ``--user-dir`` package only if it is not in ``sys.modules`` yet. A package that registers its
   components only when fairseq imports it (``fairseq_plugins`` does) can define ``__fairseq_register__()``: when it
   was imported before fairseq, ``--user-dir`` calls that hook instead of skipping the package.
7. A binarised split without sentences (fairseq-preprocess of an empty text file writes a ``.bin`` of 0 bytes) stopped
   every fairseq command that reads it with numpy's "cannot mmap an empty file", naming no file, and a second error
   from ``__del__``: the error now names the ``.bin`` file and says the split has no sentences.

Usage: ``python -m sage_toolkit.install.patch_fairseq [--check]`` (from the checkout's root; ``make setup`` runs it).
With ``--check`` nothing is written and the exit status
says whether every fix is in place. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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

_HELP_HELPER = """

def _without_help(parser, input_args):  # fairseq-sage patch
    \"\"\"(input_args without -h/--help, whether they asked for help): the first parse must not print the help.\"\"\"
    import sys

    argv = list(sys.argv[1:] if input_args is None else input_args)
    flags = {s for a in parser._actions if isinstance(a, argparse._HelpAction) for s in a.option_strings}
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a not in flags] + argv[end:]
    return kept, len(kept) < len(argv)
"""
_FIRST_PARSE_OLD = (
    "    # If input_args is given, we will parse those args instead of sys.argv.\n"
    "    args, _ = parser.parse_known_args(input_args)\n"
)
_FIRST_PARSE_NEW = (
    "    # If input_args is given, we will parse those args instead of sys.argv.\n"
    "    # fairseq-sage patch: -h/--help is answered by the second parse, which knows the chosen components' options\n"
    "    first_args, asks_help = _without_help(parser, input_args)\n"
    "    args, _ = parser.parse_known_args(first_args)\n"
)
_NO_ARCH_OLD = (
    "            MODEL_REGISTRY[args.arch].add_args(model_specific_group)\n"
    "        else:\n"
    "            raise RuntimeError()\n"
)
_NO_ARCH_NEW = (
    "            MODEL_REGISTRY[args.arch].add_args(model_specific_group)\n"
    "        elif not asks_help:  # fairseq-sage patch: --help without --arch lists no model options\n"
    "            raise RuntimeError()\n"
)
_USER_DIR_OLD = (
    "            elif module_path in sys.modules[module_name].__path__:\n"
    '                logger.info(f"--user-dir={module_path} has already been imported.")\n'
)
_USER_DIR_NEW = _USER_DIR_OLD + (
    "                # fairseq-sage patch: a package imported before fairseq may register its components now\n"
    '                _register = getattr(sys.modules[module_name], "__fairseq_register__", None)\n'
    "                if callable(_register):\n"
    "                    _register()\n"
)

_EMPTY_SPLIT_OLD = (
    "        self._index = self.Index(index_file_path(self._path))\n\n"
    "        _warmup_mmap_file(data_file_path(self._path))\n"
)
_EMPTY_SPLIT_NEW = (
    "        self._index = self.Index(index_file_path(self._path))\n\n"
    "        if os.path.getsize(data_file_path(self._path)) == 0:  # fairseq-sage patch: name the empty split\n"
    "            raise ValueError(\n"
    '                f"{data_file_path(self._path)} is empty: this split has no sentences "\n'
    '                "(fairseq-preprocess was given an empty text file)"\n'
    "            )\n"
    "        _warmup_mmap_file(data_file_path(self._path))\n"
)
_MMAP_DEL_OLD = (
    "    def __del__(self):\n"
    "        self._bin_buffer_mmap._mmap.close()\n"
    "        del self._bin_buffer_mmap\n"
    "        del self._index\n"
)
_MMAP_DEL_NEW = (
    "    def __del__(self):\n"
    '        if not hasattr(self, "_bin_buffer_mmap"):  # fairseq-sage patch: _do_init stopped before the mmap\n'
    "            return\n"
    "        self._bin_buffer_mmap._mmap.close()\n"
    "        del self._bin_buffer_mmap\n"
    "        del self._index\n"
)

_CHECKPOINT_LOAD_OLD = (
    '    with open(local_path, "rb") as f:\n        state = torch.load(f, map_location=torch.device("cpu"))\n'
)
_CHECKPOINT_LOAD_V1 = _CHECKPOINT_LOAD_OLD.replace('("cpu"))', '("cpu"), weights_only=False)')
_CHECKPOINT_LOAD_NEW = (
    "    # fairseq-sage patch: weights_only=True, allowing the globals of fairseq's checkpoints; others are refused\n"
    "    # (SAGE_TRUST_CHECKPOINTS=1 loads a trusted file in full), an unreadable file is named (docs/checkpoints.md)\n"
    "    from sage_toolkit.checkpoint_io import load_checkpoint_file\n\n"
    "    state = load_checkpoint_file(local_path)\n"
)
_EMA_LOAD_OLD = (
    "        new_state = torch.load(\n"
    "            f,\n"
    "            map_location=(\n"
    '                lambda s, _: torch.serialization.default_restore_location(s, "cpu")\n'
    "            ),\n"
    "        )\n"
)
_EMA_LOAD_V1 = _EMA_LOAD_OLD.replace("            f,\n", "            f,\n            weights_only=False,\n")
_EMA_LOAD_NEW = (
    "        from sage_toolkit.checkpoint_io import load_checkpoint_file  # fairseq-sage patch: safe load\n\n"
    "        new_state = load_checkpoint_file(fpath)\n"
)
_ATOMIC_SAVE_OLD = (
    "        if PathManager.supports_rename(filename):\n"
    "            # do atomic save\n"
    '            with PathManager.open(filename + ".tmp", "wb") as f:\n'
    "                _torch_persistent_save(obj, f)\n"
    '            PathManager.rename(filename + ".tmp", filename)\n'
)
_ATOMIC_SAVE_NEW = (
    "        if PathManager.supports_rename(filename):\n"
    "            # fairseq-sage patch: NAME.tmp flushed to disk, then renamed into place (docs/checkpoints.md)\n"
    "            from sage_toolkit.checkpoint_io import save_checkpoint_file\n\n"
    "            save_checkpoint_file(obj, filename)\n"
)
_COPY_OLD = (
    "                assert PathManager.copy(\n"
    "                    checkpoints[0], cp, overwrite=True\n"
    '                ), f"Failed to copy {checkpoints[0]} to {cp}"\n'
)
_COPY_NEW = (
    "                # fairseq-sage patch: copied to NAME.tmp, renamed into place; fairseq's copy truncated cp\n"
    "                # first, and a SIGTERM during it left an empty checkpoint_last.pt (docs/checkpoints.md)\n"
    "                from sage_toolkit.checkpoint_io import copy_checkpoint_file\n\n"
    "                copy_checkpoint_file(checkpoints[0], cp)\n"
)
_RESUME_OLD = "    extra_state = trainer.load_checkpoint(\n        checkpoint_path,\n"
_RESUME_NEW = (
    "    # fairseq-sage patch: an unreadable resume point is named; the newest intact checkpoint of the save dir\n"
    "    # replaces an unreadable checkpoint_last.pt, or is named as the remedy for an explicit restore file\n"
    "    from sage_toolkit.checkpoint_io import resume_point\n\n"
    '    last = os.path.join(cfg.save_dir, "checkpoint_last{}.pt".format(suffix or ""))\n'
    '    checkpoint_path = str(resume_point(checkpoint_path, fallback=checkpoint_path == last, suffix=suffix or ""))\n'
) + _RESUME_OLD
_HYDRA_CRASH_OLD = "    except BaseException as e:\n        if not cfg.common.suppress_crashes:\n            raise\n"
_HYDRA_CRASH_NEW = (
    "    except BaseException as e:\n"
    "        # fairseq-sage patch: a ToolkitError (a refused or unreadable checkpoint): one line, no traceback\n"
    "        from sage_toolkit.checkpoint_io import exit_if_toolkit_error\n\n"
    "        exit_if_toolkit_error(e)\n"
    "        if not cfg.common.suppress_crashes:\n"
    "            raise\n"
)
_BROADCAST_OLD = '        obj = torch.load(buffer, map_location="cpu")\n'
_BROADCAST_V1 = '        obj = torch.load(buffer, map_location="cpu", weights_only=False)\n'
_BROADCAST_NEW = (
    "        # fairseq-sage patch: bytes pickled by another rank of this job, not read from a user's file (a\n"
    "        # checkpoint among them was loaded by rank 0 with sage_toolkit.checkpoint_io's safe load): full unpickle\n"
) + _BROADCAST_V1

# (relative path, old text (or a tuple of alternatives), new text): literal edits, each applied once.
_LITERAL_EDITS = [
    ("dataclass/initialize.py", _HYDRA_INIT_OLD, _HYDRA_INIT_NEW),
    # 2. checkpoints: loaded safely, written atomically, resumed from an intact one. (old, new) pairs whose old text
    #    is a tuple accept fairseq's text or what an earlier version of this patch made of it.
    ("checkpoint_utils.py", (_CHECKPOINT_LOAD_OLD, _CHECKPOINT_LOAD_V1), _CHECKPOINT_LOAD_NEW),
    ("checkpoint_utils.py", (_EMA_LOAD_OLD, _EMA_LOAD_V1), _EMA_LOAD_NEW),
    ("checkpoint_utils.py", _ATOMIC_SAVE_OLD, _ATOMIC_SAVE_NEW),
    ("checkpoint_utils.py", _COPY_OLD, _COPY_NEW),
    ("checkpoint_utils.py", _RESUME_OLD, _RESUME_NEW),
    ("distributed/utils.py", (_BROADCAST_OLD, _BROADCAST_V1), _BROADCAST_NEW),
    ("../fairseq_cli/hydra_train.py", _HYDRA_CRASH_OLD, _HYDRA_CRASH_NEW),
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
    # 5. --help lists the options of the chosen model, task, criterion, optimizer, lr scheduler, ...
    ("options.py", "\n\ndef parse_args_and_arch(\n", _HELP_HELPER + "\n\ndef parse_args_and_arch(\n"),
    ("options.py", _FIRST_PARSE_OLD, _FIRST_PARSE_NEW),
    ("options.py", _NO_ARCH_OLD, _NO_ARCH_NEW),
    # 6. a --user-dir package imported before fairseq registers its components through its hook
    ("utils.py", _USER_DIR_OLD, _USER_DIR_NEW),
    # 7. an empty split is named (the same check as sage_toolkit.evaluation.dataset.check_split_has_sentences)
    ("data/indexed_dataset.py", "\nimport shutil\n", "\nimport os  # fairseq-sage patch\nimport shutil\n"),
    ("data/indexed_dataset.py", _EMPTY_SPLIT_OLD, _EMPTY_SPLIT_NEW),
    ("data/indexed_dataset.py", _MMAP_DEL_OLD, _MMAP_DEL_NEW),
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
    for rel, olds, new in _LITERAL_EDITS:
        path = pathlib.Path(os.path.normpath(root / rel))  # ../fairseq_cli/...: fairseq's command lines
        text = changes.get(path, path.read_text(encoding="utf-8"))
        if new in text:
            continue
        old = next((o for o in ((olds,) if isinstance(olds, str) else olds) if o in text), None)
        if old is None:
            sys.exit(f"patch_fairseq: {path} does not contain the expected code; is this fairseq 0.12.2?")
        changes[path] = text.replace(old, new, 1)
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
