"""The study's protocol, which keeps the test sets out of every decision:

1. Grid: every setting trained with ``tune_seed``; each final checkpoint (``checkpoint_last.pt``: every run has the
   same update budget) translated on the validation set, beam ``beam``, length penalty 1.0. The setting with the highest
   validation sacreBLEU wins (ties: the lower final validation loss).
2. Seeds: the winning setting trained with every seed of ``seeds`` (the tune seed's run is the grid's, reused).
3. Length penalty: each seed's model translates the validation set with every value of ``lenpens``; per optimizer the
   value with the highest mean validation sacreBLEU over its seeds is chosen.
4. Test: each seed's model translates every subset of ``test_subsets`` with length penalty 1.0 and with the chosen one.

Outputs in OUT: one folder per run (``OPTIMIZER/SETTING/seedN``: fairseq's log and checkpoints, ``eval.SUBSET.lpX.json``
from scripts/evaluate.py), ``study.json`` (everything measured), ``study.md`` (the tables) and ``learning_curves.png``,
``grid_curves.png``, ``lenpen.png``. Re-running resumes: finished trainings and evaluations are read, not redone (a
training that completed is never trained further).

Like a comparison (whose runs and process handling it uses, :mod:`sage_toolkit.runner`): SIGINT/SIGTERM stop every child
and start nothing further (exit 128 + the signal, one line on stderr); the output folder and every run folder are
locked while written (another runner refuses, naming the folder and the PID); a run that fails outside the grid stops
the study with its name, log and the end of its error (exit 1). A grid run that fails is recorded in its failed.json
and loses the grid.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from concurrent.futures import Future, as_completed
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.paths import ROOT
from sage_toolkit.runner.console import complain, say
from sage_toolkit.runner.process import SUPERVISOR, RunFailed, runner_session, worker_pool
from sage_toolkit.runner.training import Run, RunSettings
from sage_toolkit.study.report import plots, report
from sage_toolkit.study.spec import StudySpec

SCORE_KEYS = ("bleu_tok", "sacrebleu", "chrf", "bp", "sys_len", "ref_len", "sacrebleu_signature")


class Study:
    """A study of ``spec`` in the folder ``out``: ``jobs`` trainings/evaluations at a time, translation on the CPU
    unless ``cpu`` is False. The data-bin is checked here (ToolkitError if it is not one)."""

    def __init__(self, spec: StudySpec, out: Path, jobs: int, cpu: bool):
        self.spec, self.out = spec, out
        self.data = (ROOT / spec.data).resolve() if not Path(spec.data).is_absolute() else Path(spec.data)
        if not any(self.data.glob("dict.*.txt")):
            raise ToolkitError(f"data {self.data}: not a fairseq data-bin (no dict.*.txt); prepare it with data_prep/")
        self.jobs = max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.cpu = cpu
        self.run_settings = RunSettings(
            data=self.data, out=out, overrides=list(spec.overrides), valid_bleu=spec.valid_bleu,
            validate_every=spec.validate_every, verbose=False, beam=spec.beam, lenpen=1.0, cpu=cpu,
        )  # fmt: skip
        self.pool = None  # the worker pool, while execute() runs

    # -- units of work (each runs in the pool) ------------------------------------------------------------------

    def run(self, optimizer: str, setting: str, seed: int) -> Run:
        opt = self.spec.optimizers[optimizer]
        return Run(self.run_settings, opt.config, seed, opt.grid[setting], tag=f"{optimizer}/{setting}")

    def evaluate(self, run: Run, subset: str, lenpen: float) -> dict:
        """scripts/evaluate.py on the final checkpoint; cached in the run's folder."""
        SUPERVISOR.check()  # a stopping study starts nothing (and creates no run folder)
        out = run.dir / f"eval.{subset}.lp{lenpen:g}.json"
        with run.locked():
            if not out.exists():
                run.evaluate(self.threads, subset, lenpen, out, checkpoint=run.dir / "checkpoint_last.pt")
        return json.loads(out.read_text())

    def train_and_validate(self, run: Run, tolerate_failure: bool = False) -> dict:
        """Train, then translate the validation set. A grid run that fails (a setting that diverges: fairseq stops on
        NaN/Inf gradients) is recorded in failed.json and loses the grid instead of ending the study."""
        SUPERVISOR.check()
        failed = run.dir / "failed.json"
        if failed.exists():
            return json.loads(failed.read_text())
        try:
            run.train(self.threads)
        except RunFailed as e:  # not an interruption (Stopped): that is never recorded as a failure
            if not tolerate_failure:
                raise
            say(f"[{run.name}] FAILED: {e.what} exited with status {e.returncode}; recorded in {failed}")
            complain(f"study: {e}")
            record = {"failed": str(e), "sacrebleu": None, "bleu_tok": None, "bp": None}
            write_atomic(failed, json.dumps(record))
            return record
        result = self.evaluate(run, "valid", 1.0)
        say(f"[{run.name}] valid sacreBLEU {result['sacrebleu']:.2f} (beam {self.spec.beam}, lenpen 1)")
        return result

    # -- the protocol ----------------------------------------------------------------------------------------------

    def optimizer_track(self, optimizer: str, grid_futures: dict[str, Future]) -> dict:
        """Steps 2-4 for one optimizer, once its grid is done (runs in its own thread, not in the pool)."""
        spec = self.spec
        grid_spec = spec.optimizers[optimizer].grid
        grid = {setting: future.result() for setting, future in grid_futures.items()}
        scores = {}
        for setting in grid:
            run = self.run(optimizer, setting, spec.tune_seed)
            scores[setting] = {
                "valid_sacrebleu": grid[setting]["sacrebleu"],
                "valid_bleu_tok": grid[setting]["bleu_tok"],
                "valid_bp": grid[setting]["bp"],
                "final_valid_loss": run.training_summary()["final_valid_loss"],
                "overrides": grid_spec[setting],
                "failed": grid[setting].get("failed"),
            }
        ok = [s for s in scores if not scores[s]["failed"]]
        if not ok:
            raise ToolkitError(f"[{optimizer}] every grid setting failed; see {self.out / optimizer}/*/train.out")
        best = max(ok, key=lambda s: (scores[s]["valid_sacrebleu"], -(scores[s]["final_valid_loss"] or math.inf)))
        say(f"[{optimizer}] best setting on valid: {best} ({scores[best]['valid_sacrebleu']:.2f})")
        runs = [self.run(optimizer, best, seed) for seed in spec.seeds]
        trained = [self.pool.submit(self.train_and_validate, run) for run in runs]
        for future in as_completed(trained):
            future.result()  # the first failure ends the study (at once, not after the runs before it)
        sweeps = {
            (run.seed, lp): self.pool.submit(self.evaluate, run, "valid", lp) for run in runs for lp in spec.lenpens
        }
        mean_by_lenpen = {
            lp: statistics.mean(sweeps[(run.seed, lp)].result()["sacrebleu"] for run in runs) for lp in spec.lenpens
        }
        lenpen = max(spec.lenpens, key=lambda lp: (mean_by_lenpen[lp], -abs(lp - 1.0)))
        say(f"[{optimizer}] length penalty on valid: {lenpen:g} (mean sacreBLEU {mean_by_lenpen[lenpen]:.2f})")
        tests = {
            (run.seed, subset, lp): self.pool.submit(self.evaluate, run, subset, lp)
            for run in runs
            for subset in spec.test_subsets
            for lp in sorted({1.0, lenpen})
        }
        seeds = []
        for run in runs:
            entry = {"seed": run.seed, "dir": str(run.dir), **run.training_summary()}
            entry["valid"] = {f"{lp:g}": _scores(sweeps[(run.seed, lp)].result()) for lp in spec.lenpens}
            entry["test"] = {
                subset: {f"{lp:g}": _scores(tests[(run.seed, subset, lp)].result()) for lp in sorted({1.0, lenpen})}
                for subset in spec.test_subsets
            }
            seeds.append(entry)
        return {
            "config": spec.optimizers[optimizer].config,
            "grid": scores,
            "best_setting": best,
            "overrides": grid_spec[best],
            "valid_sacrebleu_by_lenpen": {f"{lp:g}": v for lp, v in mean_by_lenpen.items()},
            "lenpen": lenpen,
            "seeds": seeds,
            "grid_curves": {s: self.run(optimizer, s, spec.tune_seed).training_summary()["curve"] for s in grid},
        }

    def execute(self) -> dict:
        """Steps 1-4 for every optimizer; the results by optimizer (study.json's "results")."""
        with worker_pool(self.jobs) as self.pool:
            return self._execute()

    def _execute(self) -> dict:
        spec = self.spec
        names = list(spec.optimizers)
        settings = {name: list(spec.optimizers[name].grid) for name in names}
        # interleave the optimizers (first setting of each, then the second ...): both grids finish at about one time
        grid_futures: dict[str, dict[str, Future]] = {name: {} for name in names}
        for i in range(max(len(s) for s in settings.values())):
            for name in names:
                if i < len(settings[name]):
                    run = self.run(name, settings[name][i], spec.tune_seed)
                    grid_futures[name][settings[name][i]] = self.pool.submit(self.train_and_validate, run, True)
        with worker_pool(len(names)) as tracks:
            futures = {name: tracks.submit(self.optimizer_track, name, grid_futures[name]) for name in names}
            for future in as_completed(futures.values()):
                future.result()  # the first failure ends the study: the other track's children are stopped
            results = {name: future.result() for name, future in futures.items()}
        return results


def _scores(result: dict) -> dict:
    return {k: result.get(k) for k in SCORE_KEYS}


def run_study(study: Study, prog: str = "study") -> dict:
    """Run the study inside a runner session named ``prog`` and write study.json, study.md and the plots; the
    summary (study.json's content). Prints the progress, then the tables and the files written."""
    out, spec = study.out, study.spec
    out.mkdir(parents=True, exist_ok=True)
    with runner_session(prog, out):
        results = study.execute()
        summary = {"spec": spec.record, "spec_file": str(spec.source), "results": results}
        write_atomic(out / "study.json", json.dumps(summary, indent=1))
        text = report(spec, results)
        write_atomic(out / "study.md", text)
        plots(out, spec, results)
    say("\n" + text)
    say(f"wrote {out / 'study.md'}, {out / 'study.json'}, learning_curves.png, grid_curves.png, lenpen.png")
    return summary
