"""Adam versus SAGE: a set of Hydra configs trained over N seeds, evaluated, tabulated, plotted.

For every (config, seed) a :class:`~sage_toolkit.runner.training.Run` trains into OUT/CONFIG/seedN and evaluates the
test set; then OUT/results.json, OUT/results.md and OUT/learning_curves.png are written. Re-running skips finished runs
and resumes unfinished ones (see :mod:`.training`). With ``jobs`` 2 two runs train at the same time, one core each. The
whole comparison works inside :func:`~sage_toolkit.runner.process.runner_session` (signals, locks, failures).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.dataset import read_prep
from sage_toolkit.paths import CONFIG_DIR
from sage_toolkit.runner.console import say
from sage_toolkit.runner.process import runner_session, worker_pool
from sage_toolkit.runner.report import comparison_markdown, metrics, plot_learning_curves
from sage_toolkit.runner.training import Run, RunSettings
from sage_toolkit.stats import mean_std

PROG = "sage-compare"  # the console script; also the prefix of its messages


@dataclass
class CompareOptions:
    """A comparison: which configs (names in configs/) over which seeds, on which data-bin, into which folder."""

    data: Path  # the prepared data-bin folder
    out: Path  # output folder (runs, results, plot)
    configs: list[str] = field(default_factory=lambda: ["demo_adam", "demo_sage"])
    seeds: list[int] = field(default_factory=lambda: [1])
    jobs: int = 1  # runs trained at the same time
    beam: int = 5
    lenpen: float = 1.0
    validate_every: int = 0  # also validate every N updates
    valid_bleu: bool = True  # False: validation loss only
    cpu: bool = False  # evaluate on the CPU
    verbose: bool = False  # show every line of fairseq's output
    overrides: list[str] = field(default_factory=list)  # Hydra overrides for every run
    note: str = ""  # printed with the table and kept in results.md/json: what a reader must know to read it

    def __post_init__(self):
        self.data, self.out = Path(self.data).absolute(), Path(self.out).absolute()  # the runs start in the repo root

    def check(self) -> None:
        """Usage errors (ToolkitError, exit status 2): a config that configs/ lacks, data that is not a data-bin, a
        repeated config or seed, a count out of range."""
        for option, value, minimum in (("--jobs", self.jobs, 1), ("--beam", self.beam, 1),
                                       ("--validate-every", self.validate_every, 0)):  # fmt: skip
            if value < minimum:
                raise ToolkitError(f"{option} must be >= {minimum}, got {value}", exit_code=2)
        for option, values in (("--configs", self.configs), ("--seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise ToolkitError(f"{option}: each value once, got {' '.join(map(str, values))}", exit_code=2)
        for config in self.configs:
            if not (CONFIG_DIR / f"{config}.yaml").exists():
                raise ToolkitError(f"--configs: no config {CONFIG_DIR / config}.yaml", exit_code=2)
        if not any(self.data.glob("dict.*.txt")):
            raise ToolkitError(
                f"--data: {self.data} is not a fairseq data-bin (no dict.*.txt); prepare it with data_prep/",
                exit_code=2,
            )
        try:
            read_prep(self.data)  # every run reads it: a broken one is refused before the first starts
        except ToolkitError as e:
            raise ToolkitError(f"--data: {e}", exit_code=2) from e

    def run_settings(self) -> RunSettings:
        return RunSettings(
            data=self.data, out=self.out, overrides=list(self.overrides), valid_bleu=self.valid_bleu,
            validate_every=self.validate_every, verbose=self.verbose, beam=self.beam, lenpen=self.lenpen, cpu=self.cpu,
        )  # fmt: skip


def aggregate(runs: list[dict], configs: list[str]) -> dict:
    """results.json's table: per config its seeds and the mean and standard deviation of every
    :func:`~sage_toolkit.runner.report.metrics` key."""
    table = {}
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        table[config] = {"seeds": [r["seed"] for r in mine]}
        for key, _, _ in metrics():
            mean, std = mean_std([r.get(key) for r in mine])
            table[config][key] = {"mean": mean, "std": std}
    return table


def compare(options: CompareOptions, prog: str = PROG) -> dict:
    """Run the comparison (checked options) inside a runner session named ``prog``; results.json's content.

    Prints each run's progress, then the table and the files written."""
    options.out.mkdir(parents=True, exist_ok=True)
    with runner_session(prog, options.out):
        return _compare(options)


def _compare(options: CompareOptions) -> dict:
    settings = options.run_settings()
    # interleave the optimizers (seed 1 of each, then seed 2 ...), so an interrupted comparison stays balanced
    runs = [Run(settings, config, seed) for seed in options.seeds for config in options.configs]
    threads = max(1, (os.cpu_count() or 1) // max(1, options.jobs))
    with worker_pool(options.jobs) as pool:
        for future in as_completed([pool.submit(run.execute, threads) for run in runs]):
            future.result()  # the first failure stops the others (resumable) and is reported by runner_session

    summaries = [run.summary() for run in runs]
    table = aggregate(summaries, options.configs)
    results = {
        "data": str(options.data),
        "configs": options.configs,
        "seeds": options.seeds,
        "beam": options.beam,
        "lenpen": options.lenpen,
        "overrides": options.overrides,
        "note": options.note,
        "table": table,
        "runs": summaries,
    }
    out = options.out
    write_atomic(out / "results.json", json.dumps(results, indent=1))
    text = comparison_markdown(options.configs, summaries, options.data, options.beam, options.lenpen, options.note)
    write_atomic(out / "results.md", text)
    plot_learning_curves(out / "learning_curves.png", summaries, options.configs)
    say("\n" + text)
    say(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'learning_curves.png'}")
    return results
