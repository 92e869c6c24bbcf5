"""End-to-end ``fairseq-train`` speed of ``adam`` and ``adam_sage`` on a synthetic corpus (no download).

The corpus is random text: sentences of random "words" from a fixed vocabulary, binarized by ``fairseq-preprocess``
into a data-bin of the size of IWSLT'14's dictionaries. A translation model learns nothing from it, but an update
costs what it costs on real data of these lengths and vocabulary: this measures throughput, not quality. Each run is
one ``fairseq-train`` process (``python -m sage_toolkit.gpu.train_speed ARGS``: fairseq's own command line, which then
prints the process's peak CUDA memory), without checkpoints or validation; words/s is the median of fairseq's ``wps``
over the logged intervals after the first (which holds the start-up and, for Triton, the kernel's compilation).
"""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.fairseq_log import read_log
from sage_toolkit.paths import PLUGIN_DIR, ROOT
from sage_toolkit.tiny_fairseq import cpu_env, cuda_env

PEAK_TAG = "GPU_CHECK_PEAK_MEMORY_BYTES"


def write_corpus(raw_dir: Path, pairs: int, vocab: int, seed: int = 0) -> Path:
    """train/valid .src/.tgt files of random sentences (5 to 40 words) over ``vocab`` words per side."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for split, n in (("train", pairs), ("valid", max(10, pairs // 100))):
        for side, prefix in (("src", "s"), ("tgt", "t")):
            lines = (" ".join(f"{prefix}{rng.randrange(vocab)}" for _ in range(rng.randint(5, 40))) for _ in range(n))
            (raw_dir / f"{split}.{side}").write_text("\n".join(lines) + "\n")
    return raw_dir


def _python(module_args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *module_args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)  # fmt: skip


def _env(cpu: bool) -> dict[str, str]:
    """The fairseq processes' environment: the test suite's (no GPU, the caller's threads, else 1) or the GPU's."""
    return cpu_env() if cpu else cuda_env()


def build_data_bin(work: Path, pairs: int, vocab: int, cpu: bool, workers: int) -> Path:
    """The synthetic corpus binarized by ``fairseq-preprocess`` into ``work/data-bin``."""
    raw = write_corpus(work / "raw", pairs, vocab)
    dest = work / "data-bin"
    args = ["-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
            str(raw / "train"), "--validpref", str(raw / "valid"), "--destdir", str(dest),
            "--workers", str(workers)]  # fmt: skip
    proc = _python(args, _env(cpu), timeout=600)
    if proc.returncode != 0:
        raise ToolkitError(f"fairseq-preprocess of the synthetic corpus failed:\n{proc.stderr[-2000:]}")
    return dest


# the tiny model of the smoke mode (on the CPU, in seconds)
SMOKE_MODEL = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim",
               "32", "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads",
               "2", "--decoder-attention-heads", "2"]  # fmt: skip

_ADAM = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"]
_SAGE = ["--optimizer", "adam_sage", "--adam-betas", "(0.9, 0.98)", "--sage-impl"]
RUNS = {  # name -> (optimizer flags, precision flags on a GPU: --fp16 hands the optimizer one flat tensor, fp32 every
    # parameter tensor, the per-tensor host work a launch plan takes away)
    "adam": (_ADAM, ["--fp16"]),
    "adam_sage_foreach": ([*_SAGE, "foreach"], ["--fp16"]),
    "adam_sage_triton": ([*_SAGE, "triton"], ["--fp16"]),
    "adam_fp32": (_ADAM, []),
    "adam_sage_triton_fp32": ([*_SAGE, "triton"], []),
}


@dataclass
class TrainResult:
    run: str
    updates: int
    words_per_second: float | None = None
    updates_per_second: float | None = None
    peak_memory_mb: float | None = None
    error: str | None = None


def train(name: str, data_bin: Path, work: Path, updates: int, cpu: bool, timeout: float) -> TrainResult:
    """One ``fairseq-train`` run of transformer_iwslt_de_en (on a GPU with the run's precision flags; the tiny model on
    the CPU)."""
    log = work / f"{name}.log"
    log.unlink(missing_ok=True)
    interval = max(1, min(50, updates // 6))
    args = [str(data_bin), "--user-dir", str(PLUGIN_DIR), "--task", "translation", "--arch", "transformer_iwslt_de_en",
            "--share-decoder-input-output-embed", *RUNS[name][0], "--clip-norm", "0.0", "--lr", "5e-4",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000", "--dropout", "0.3", "--weight-decay",
            "0.0001", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-tokens",
            "4096", "--max-update", str(updates), "--seed", "1", "--no-save", "--disable-validation",
            "--log-format", "json", "--log-interval", str(interval), "--log-file", str(log),
            "--num-workers", "0"]  # fmt: skip
    args += ["--cpu", *SMOKE_MODEL] if cpu else RUNS[name][1]
    env = _env(cpu)
    if cpu and "triton" in name:
        env["TRITON_INTERPRET"] = "1"
    result = TrainResult(name, updates)
    try:
        proc = _python(["-m", "sage_toolkit.gpu.train_speed", *args], env, timeout)
    except subprocess.TimeoutExpired:
        result.error = f"timed out after {timeout:.0f} s"
        return result
    if proc.returncode != 0:
        result.error = f"fairseq-train exited with {proc.returncode}: {proc.stderr.strip()[-600:]}"
        return result
    records = read_log(log)["train_inner"]
    steady = records[1:] or records
    wps = [r["wps"] for r in steady if isinstance(r.get("wps"), float)]
    ups = [r["ups"] for r in steady if isinstance(r.get("ups"), float)]
    result.words_per_second = statistics.median(wps) if wps else None
    result.updates_per_second = statistics.median(ups) if ups else None
    for line in proc.stdout.splitlines():
        if line.startswith(PEAK_TAG):
            peak = int(line.split()[1])
            result.peak_memory_mb = peak / 2**20 if peak else None
    return result


def _main() -> None:
    """``fairseq-train`` with this process's arguments, then the peak CUDA memory it allocated."""
    import torch
    from fairseq_cli.train import cli_main

    sys.argv = ["fairseq-train", *sys.argv[1:]]
    try:
        cli_main()
    finally:
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        print(f"{PEAK_TAG} {peak}", flush=True)


if __name__ == "__main__":
    _main()
