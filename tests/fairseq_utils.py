"""Helpers for tests that run fairseq's real command-line tools on a tiny generated corpus.

The corpus, the tiny model and the fairseq runs are sage_toolkit.tiny_fairseq's (the GPU checks' smoke runs use them
too); this module adds what only the tests need.
"""

from __future__ import annotations

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
