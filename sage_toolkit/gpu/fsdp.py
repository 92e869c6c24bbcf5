"""``fairseq-train --ddp-backend fully_sharded`` (FSDP, fairscale's) with ``adam_sage`` on one GPU, and a resume.

FSDP hands the optimizer flattened, sharded parameters and gathers the optimizer state into the checkpoint
(``gather_full_optim_state_dict``); the resume scatters it back. Neither had run with SAGE. The tiny model of
sage_toolkit.tiny_fairseq trains ``updates`` updates and saves, then the same command continues from its
checkpoint to twice as many. fairseq 0.12.2 builds a one-member process group from ``fairscale.utils.testing``
when it is started as one plain process, a module that fairscale 0.4.13 no longer has: the plain start is tried and
reported as it ends, and the runs themselves go through torch's launcher with one process (a process group of one,
as in a multi-GPU run). fairscale's FSDP runs on CUDA only.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from sage_toolkit.paths import ROOT
from sage_toolkit.tiny_fairseq import cuda_env, make_tiny_corpus, preprocess, train_args, train_log

OPTIMIZER = ["--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)", "--sage-impl", "auto"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(data_bin: Path, save_dir: Path, updates: int) -> list[str]:
    args = train_args(data_bin, save_dir, OPTIMIZER, updates, ["--ddp-backend", "fully_sharded"])
    return [str(a) for a in args if a != "--cpu"]


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess | str:
    try:
        return subprocess.run(command, capture_output=True, text=True, env=cuda_env(), cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"


def _outcome(proc: subprocess.CompletedProcess | str) -> dict:
    """Exit status, the last logged update and loss, and the end of stderr where it failed."""
    if isinstance(proc, str):
        return dict(ok=False, error=proc)
    records = train_log(proc)
    out = dict(ok=proc.returncode == 0, returncode=proc.returncode)
    if records:
        out.update(last_update=records[-1].get("num_updates"), last_loss=records[-1].get("loss"))
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        out["error"] = " | ".join(lines[-3:])[-500:]
    return out


def _launched(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}", "-m", "fairseq_cli.train", *args]  # fmt: skip


def check_fsdp(work: Path, cuda: bool, updates: int = 20, timeout: float = 180.0) -> dict:
    """The runs and their outcomes: ``single_process`` (a plain start), ``train`` (``updates`` updates, saved),
    ``resume`` (from that checkpoint to ``2 * updates``; ``resumed_from``: the update fairseq's log says it loaded)."""
    if not cuda:
        return dict(skipped="fairscale's FullyShardedDataParallel runs on CUDA only")
    work.mkdir(parents=True, exist_ok=True)
    data_bin = preprocess(make_tiny_corpus(work / "raw"), work / "data-bin")
    out = {}
    plain = _run([sys.executable, "-m", "fairseq_cli.train", *_args(data_bin, work / "plain", updates)], timeout)
    out["single_process"] = _outcome(plain)
    first = _run(_launched(_args(data_bin, work / "fsdp", updates)), timeout)
    out["train"] = _outcome(first)
    if not out["train"]["ok"]:
        return out
    resumed = _run(_launched(_args(data_bin, work / "fsdp", 2 * updates)), timeout)
    out["resume"] = _outcome(resumed)
    if not isinstance(resumed, str):
        loaded = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "Loaded checkpoint" in line]
        out["resume"]["resumed_from"] = loaded[-1].split("(", 1)[-1].rstrip(")")[:80] if loaded else None
        records = train_log(resumed)
        out["resume"]["first_update"] = records[0].get("num_updates") if records else None
    return out
