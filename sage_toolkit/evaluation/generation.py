"""fairseq-generate on a data-bin (a subprocess, ``python -m fairseq_cli.generate``) and reading its output.

The command has ``--user-dir fairseq_plugins`` (checkpoints trained with the plugin's optimizers load), the given beam,
length penalty, batch size and ``--remove-bpe`` value, ``--nbest 1``, and writes ``generate-{subset}.txt`` into a
results folder; it runs from the repository root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.dataset import Setup
from sage_toolkit.evaluation.options import EvalOptions
from sage_toolkit.paths import PLUGIN_DIR, ROOT


def generate_command(options: EvalOptions, setup: Setup, checkpoint: Path, results_dir: Path) -> list[str]:
    """The fairseq-generate command line that translates ``options.subset`` with ``checkpoint``."""
    cmd = [
        sys.executable, "-m", "fairseq_cli.generate", str(options.data_bin), "--path", str(checkpoint),
        "--user-dir", str(PLUGIN_DIR), "--task", "translation", "--source-lang", setup.src, "--target-lang", setup.tgt,
        "--gen-subset", options.subset, "--beam", str(options.beam), "--lenpen", str(options.lenpen), "--nbest", "1",
        "--max-tokens", str(options.max_tokens), "--results-path", str(results_dir), "--no-progress-bar",
    ]  # fmt: skip
    if options.batch_size is not None:
        cmd += ["--batch-size", str(options.batch_size)]
    if options.cpu:
        cmd.append("--cpu")
    if setup.remove_bpe is not None:
        cmd += ["--remove-bpe", setup.remove_bpe]
    return cmd


def run_generate(cmd: list[str], results_dir: Path, subset: str, output: Path) -> None:
    """Run ``cmd`` (its output goes to this process's stdout/stderr) and move the ``generate-{subset}.txt`` it wrote
    in ``results_dir`` to ``output``."""
    proc = subprocess.run(cmd, cwd=ROOT)
    produced = Path(results_dir) / f"generate-{subset}.txt"
    if proc.returncode != 0 or not produced.is_file():
        raise ToolkitError(f"fairseq-generate failed (exit status {proc.returncode}); its output is above")
    shutil.move(produced, output)


def parse_generate(path: Path) -> tuple[list[str], list[str], str | None]:
    """(hypotheses, targets) in source order from fairseq-generate's H-/T- lines, and its final BLEU line."""
    hyps: dict[int, str] = {}
    tgts: dict[int, str] = {}
    bleu_line = None
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("H-"):
                sid, _score, text = line[2:].split("\t", 2)
                hyps.setdefault(int(sid), text)
            elif line.startswith("T-"):
                sid, text = line[2:].split("\t", 1)
                tgts[int(sid)] = text
            elif line.startswith("Generate "):
                bleu_line = line
    n = len(hyps)
    if n == 0:
        raise ToolkitError(f"fairseq-generate wrote no hypotheses ({path})")
    if set(hyps) != set(range(n)) or (tgts and set(tgts) != set(range(n))):
        raise ToolkitError(f"{path}: the H-/T- line ids are not 0..{n - 1}")
    return [hyps[i] for i in range(n)], [tgts.get(i, "") for i in range(n)], bleu_line
