"""Helpers for tests that run fairseq's real command-line tools on a tiny generated corpus.

The corpus, the tiny model and the fairseq runs are sage_toolkit.tiny_fairseq's (the GPU checks' smoke runs use them
too); this module adds what only the tests need.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from sage_toolkit.tiny_fairseq import (  # noqa: F401 - the tests import them from here
    TINY_MODEL,
    cpu_env,
    make_tiny_corpus,
    preprocess,
    run_cli,
    threads,
    train_args,
    train_log,
)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "fairseq_plugins"
SHARED_DATA = ROOT.parent / "shared" / "data"

# fairseq 0.12.2's encoder layers carry unused copies of their weights for a BetterTransformer path
# (layers.N.in_proj_weight, fc1_bias, ...): zeros that never get a gradient, overwritten by a checkpoint load.
UNUSED_BT_COPIES = re.compile(r"^encoder\.layers\.\d+\.(in_proj|out_proj|fc1|fc2)_(weight|bias)$")
# ... and a placeholder buffer of uninitialised memory in the sinusoidal positional embeddings.
PLACEHOLDER_BUFFER = re.compile(r"\._float_tensor$")


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two fairseq checkpoints hold the same training state, exactly: model parameters (but the tensors a checkpoint
    load rewrites, above), optimizer state and options, update count. Exact equality is right only for the same
    computation on the same machine (e.g. a resumed run and an uninterrupted one). Not the lr scheduler's ``best``:
    fairseq records an epoch's validation loss there after the epoch's checkpoint is saved, so a run resumed from
    that checkpoint never has it (no schedule here reads it)."""
    import torch

    for key, value in a["model"].items():
        if not (UNUSED_BT_COPIES.search(key) or PLACEHOLDER_BUFFER.search(key)):
            assert torch.equal(value, b["model"][key]), key
    sa, sb = a["last_optimizer_state"], b["last_optimizer_state"]
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for index, state in sa["state"].items():
        assert state.keys() == sb["state"][index].keys(), index
        for key, value in state.items():
            assert torch.equal(value, sb["state"][index][key]), (index, key)
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(nproc: int, args: list, timeout: int = 600) -> subprocess.CompletedProcess:
    """fairseq-train under torch's launcher with ``nproc`` CPU processes and the gloo backend."""
    env = cpu_env()
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                "--master_addr=127.0.0.1", f"--master_port={free_port()}"]  # fmt: skip
    proc = subprocess.run(
        [*launcher, "-m", "fairseq_cli.train", *map(str, args), "--distributed-backend", "gloo"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"torchrun fairseq-train failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return proc


def data_bin_variant(data_bin: Path, dest: Path, *, empty_split: str | None = None, extra_entries: int = 0) -> Path:
    """A copy of ``data_bin`` (its files and folders linked) in which ``empty_split`` has no sentences, as
    fairseq-preprocess writes an empty text file (a ``.bin`` of 0 bytes, an index of none), and each dictionary has
    ``extra_entries`` more entries: a data-bin other than the one a checkpoint was trained on."""
    dest.mkdir(parents=True)
    for path in Path(data_bin).iterdir():
        (dest / path.name).symlink_to(path.resolve())
    if empty_split is not None:
        from fairseq.data import indexed_dataset

        for index in Path(data_bin).glob(f"{empty_split}.*.idx"):
            stem = index.name[: -len(".idx")]
            for suffix in (".bin", ".idx"):
                (dest / f"{stem}{suffix}").unlink()
            builder = indexed_dataset.make_builder(str(dest / f"{stem}.bin"), impl="mmap", vocab_size=1000)
            builder.finalize(str(dest / f"{stem}.idx"))
    for dictionary in Path(data_bin).glob("dict.*.txt") if extra_entries else ():
        (dest / dictionary.name).unlink()
        extra = "".join(f"extra{i} 1\n" for i in range(extra_entries))
        (dest / dictionary.name).write_text(dictionary.read_text() + extra)
    return dest
