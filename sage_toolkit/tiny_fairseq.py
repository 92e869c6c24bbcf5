"""fairseq's real command-line tools on a tiny generated corpus: the test suite's runs and the GPU checks' CPU smoke
runs (no data files, no download).

The corpus is a synthetic word-for-word "translation" (source word aN -> target word bN, same order) that a tiny
transformer learns within a few dozen updates on a CPU. The fairseq processes run with the caller's OMP_NUM_THREADS
(else 1: no oversubscription when several run side by side) and never see a GPU, unless a GPU check asks for it
(``run_cli(..., cuda=True)``; :func:`trained_on` then reads from fairseq's log which device it used).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from .fairseq_log import number
from .paths import PLUGIN_DIR, ROOT

TINY_MODEL = [
    "--arch", "transformer",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--share-decoder-input-output-embed",
]  # fmt: skip


def make_tiny_corpus(raw_dir: Path, n_train: int = 400, n_valid: int = 40, n_test: int = 20, seed: int = 0) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        src, tgt = [], []
        for _ in range(n):
            ids = [rng.randrange(30) for _ in range(rng.randint(3, 8))]
            src.append(" ".join(f"a{i}" for i in ids))
            tgt.append(" ".join(f"b{i}" for i in ids))
        (raw_dir / f"{split}.src").write_text("\n".join(src) + "\n")
        (raw_dir / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
    return raw_dir


def threads() -> str:
    """The threads of the fairseq processes started here: the caller's OMP_NUM_THREADS (so that running the tests with
    OMP_NUM_THREADS=2 exercises 2 threads in them too), else 1 (no oversubscription when tests run side by side)."""
    return os.environ.get("OMP_NUM_THREADS", "1")


def cpu_env() -> dict[str, str]:
    """The environment of a fairseq process started here: :func:`threads` threads, no GPU, unbuffered output."""
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads(), MKL_NUM_THREADS=threads(),
                CUDA_VISIBLE_DEVICES="")  # fmt: skip


def cuda_env() -> dict[str, str]:
    """The environment of a fairseq process that is to use the GPU: the caller's (its CUDA_VISIBLE_DEVICES too),
    unbuffered output."""
    return dict(os.environ, PYTHONUNBUFFERED="1")


def run_cli(
    tool: str, args: list[str], check: bool = True, timeout: int = 600, cuda: bool = False
) -> subprocess.CompletedProcess:
    """Run a fairseq CLI (``train``, ``generate``, ``preprocess``, ...) with this Python; returns the process. The
    process sees no GPU unless ``cuda`` (then the arguments must not hold ``--cpu``)."""
    env = cuda_env() if cuda else cpu_env()
    proc = subprocess.run(
        [sys.executable, "-m", f"fairseq_cli.{tool}", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"fairseq-{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def preprocess(raw_dir: Path, dest_dir: Path) -> Path:
    run_cli(
        "preprocess",
        ["--source-lang", "src", "--target-lang", "tgt", "--trainpref", raw_dir / "train",
         "--validpref", raw_dir / "valid", "--testpref", raw_dir / "test", "--destdir", dest_dir, "--workers", "1"],
    )  # fmt: skip
    return dest_dir


def train_args(data_bin: Path, save_dir: Path, optimizer: list[str], max_update: int, extra: list[str] = ()):
    return [
        data_bin, "--user-dir", PLUGIN_DIR, "--task", "translation", *TINY_MODEL,
        *optimizer, "--lr", "5e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--dropout", "0.1",
        "--max-tokens", "400", "--max-update", str(max_update), "--seed", "1", "--cpu", "--num-workers", "0",
        "--save-dir", save_dir, "--no-epoch-checkpoints", "--no-progress-bar", "--log-format", "json",
        "--log-interval", "1", "--disable-validation", *extra,
    ]  # fmt: skip


def trained_on(proc: subprocess.CompletedProcess) -> str:
    """The device a finished ``fairseq-train`` process trained on, from its log: the GPU's name from the CUDA banner
    that fairseq's Trainer prints for rank 0 on a GPU ("rank   0: capabilities = ... ; name = NVIDIA ..."), else
    "cpu" (fairseq prints no banner there)."""
    for line in (proc.stdout + proc.stderr).splitlines():
        if "rank   0: capabilities =" in line and "name = " in line:
            return line.split("name = ", 1)[1].strip()
    return "cpu"


def train_log(proc: subprocess.CompletedProcess) -> list[dict]:
    """The per-update records (``train_inner``) that fairseq logs with --log-format json --log-interval 1."""
    records = []
    for line in (proc.stdout + proc.stderr).splitlines():
        if "| train_inner |" in line:
            record = json.loads(line.split("| train_inner |", 1)[1])
            records.append({k: number(v) for k, v in record.items()})
    return records
