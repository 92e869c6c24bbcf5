"""The study's protocol, which keeps the test sets out of every decision (docs/experiments.md, RESULTS.md):

1. Grid (:meth:`Study.grid_winner`): every setting trained with ``tune_seed``; each final model (the average of the
   last ``average_last`` checkpoints, or ``checkpoint_last.pt``) translates the validation set, length penalty 1.0; the
   highest validation sacreBLEU wins (ties: the lower final validation loss). A failed setting loses the grid.
2. Seeds (:meth:`Study.train_seeds`): the winner trained with every seed (the tune seed's run is the grid's).
3. Length penalty (:meth:`Study.choose_lenpen`): per optimizer, the value of ``lenpens`` with the highest mean
   validation sacreBLEU over its seeds.
4. Test (:meth:`Study.test`): every seed's model on every test subset with length penalty 1.0 and the chosen one (with
   ``average_last``, the last checkpoint beside the average), and on a fine-tuning study's extra tests.
5. Significance (:func:`.analyses.significance`): every optimizer against the first, paired and two-level bootstrap.

Where runs and results are kept, and the record that lets a study resume on another machine: :mod:`.store`,
:mod:`.record`; the merged analyses: :mod:`.analyses`; study.md: :mod:`.report`, :mod:`.plots`. Signals, locks and
failures behave as in a comparison (:mod:`sage_toolkit.runner`); a grid run that fails is kept in its failed.json.
"""

from __future__ import annotations

import json
import statistics
from concurrent.futures import Future, as_completed
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.result import recorded
from sage_toolkit.runner.console import complain, say
from sage_toolkit.runner.process import SUPERVISOR, RunFailed, runner_session, worker_pool
from sage_toolkit.runner.training import Run
from sage_toolkit.study import analyses, compute
from sage_toolkit.study.grid import winner
from sage_toolkit.study.plots import plots
from sage_toolkit.study.record import RunRecord
from sage_toolkit.study.report import report
from sage_toolkit.study.spec import StudySpec
from sage_toolkit.study.store import StudyRuns

PROG = "sage-study"  # the console script; also the prefix of its messages


def scores_of(evaluation: dict) -> dict:
    """The metrics study.json keeps of an evaluation (:mod:`sage_toolkit.evaluation.result`)."""
    return recorded(evaluation, "study")


class Study(StudyRuns):
    """The protocol on the runs of a spec (:class:`~.store.StudyRuns`: the arguments, the checks)."""

    def __init__(self, spec: StudySpec, out: Path, jobs: int, cpu: bool):
        super().__init__(spec, out, jobs, cpu)
        self.pool = None  # the worker pool, while execute() runs

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

    def optimizer_track(self, optimizer: str, grid_futures: dict[str, Future]) -> dict:
        """Steps 2-4 for one optimizer once its grid is done (in its own thread, not in the pool): study.json's
        results[optimizer]."""
        spec = self.spec
        scores, best = self.grid_winner(optimizer, {setting: f.result() for setting, f in grid_futures.items()})
        runs = self.train_seeds(optimizer, best)
        sweeps, mean_by_lenpen, lenpen = self.choose_lenpen(optimizer, runs)
        tests = self.test(runs, lenpen)
        return {
            "config": spec.optimizers[optimizer].config,
            "grid": scores,
            "best_setting": best,
            "overrides": spec.optimizers[optimizer].grid[best],
            "valid_sacrebleu_by_lenpen": {f"{lp:g}": v for lp, v in mean_by_lenpen.items()},
            "lenpen": lenpen,
            "seeds": [self.seed_entry(run, sweeps, tests, lenpen) for run in runs],
            "grid_curves": {s: self.training_summary(self.run(optimizer, s, spec.tune_seed))["curve"] for s in scores},
        }

    def grid_winner(self, optimizer: str, grid: dict[str, dict]) -> tuple[dict, str]:
        """Step 1's decision on the grid's validation results ``grid`` (setting -> evaluation, or the failure): the
        grid as study.json records it, and the winning setting. ToolkitError if every setting failed."""
        spec = self.spec
        scores = {}
        for setting, result in grid.items():
            run = self.run(optimizer, setting, spec.tune_seed)
            scores[setting] = {
                "valid_sacrebleu": result["sacrebleu"],
                "valid_bleu_tok": result["bleu_tok"],
                "valid_bp": result["bp"],
                "final_valid_loss": self.training_summary(run)["final_valid_loss"],
                "overrides": spec.optimizers[optimizer].grid[setting],
                "failed": result.get("failed"),
            }
        best = winner(scores)
        if best is None:
            raise ToolkitError(f"[{optimizer}] every grid setting failed; see {self.out / optimizer}/*/train.out")
        say(f"[{optimizer}] best setting on valid: {best} ({scores[best]['valid_sacrebleu']:.2f})")
        return scores, best

    def train_seeds(self, optimizer: str, setting: str) -> list[Run]:
        """Step 2: the runs of ``setting`` with every seed, trained and validated; the first failure ends the study
        (at once, not after the runs before it)."""
        runs = [self.run(optimizer, setting, seed) for seed in self.spec.seeds]
        for future in as_completed([self.pool.submit(self.train_and_validate, run) for run in runs]):
            future.result()
        return runs

    def choose_lenpen(self, optimizer: str, runs: list[Run]) -> tuple[dict, dict, float]:
        """Step 3: every run translates the validation set with every length penalty; the sweep's evaluations by (seed,
        length penalty), the mean validation sacreBLEU by length penalty, and the chosen one (ties: nearer 1.0)."""
        lenpens = self.spec.lenpens
        sweeps = {(run.seed, lp): self.pool.submit(self.evaluate, run, "valid", lp) for run in runs for lp in lenpens}
        mean_by_lenpen = {
            lp: statistics.mean(sweeps[(run.seed, lp)].result()["sacrebleu"] for run in runs) for lp in lenpens
        }
        lenpen = max(lenpens, key=lambda lp: (mean_by_lenpen[lp], -abs(lp - 1.0)))
        say(f"[{optimizer}] length penalty on valid: {lenpen:g} (mean sacreBLEU {mean_by_lenpen[lenpen]:.2f})")
        return sweeps, mean_by_lenpen, lenpen

    def test(self, runs: list[Run], lenpen: float) -> dict[tuple, Future]:
        """Step 4: every run on every test subset, length penalty 1.0 and ``lenpen``, every checkpoint kind; the
        evaluations by (seed, subset, length penalty, kind)."""
        spec = self.spec
        return {
            (run.seed, subset, lp, kind): self.pool.submit(self.evaluate, run, subset, lp, kind)
            for run in runs
            for subset in spec.test_subsets
            for lp in sorted({1.0, lenpen})
            for kind in spec.checkpoint_kinds
        }

    def seed_entry(self, run: Run, sweeps: dict, tests: dict, lenpen: float) -> dict:
        """study.json's entry of one seed run: its training summary, the validation sweep, the extra tests and the test
        scores ("test": the primary model's; "test_last" beside an average's)."""
        spec = self.spec
        entry = {"seed": run.seed, "dir": str(run.dir), **self.training_summary(run)}
        entry["valid"] = {f"{lp:g}": scores_of(sweeps[(run.seed, lp)].result()) for lp in spec.lenpens}
        if spec.extra_tests:
            entry["extra_tests"] = {test: scores_of(self.evaluate_extra(run, test)) for test in spec.extra_tests}
        for kind in spec.checkpoint_kinds:
            entry["test" if kind == self.primary else f"test_{kind}"] = {
                subset: {
                    f"{lp:g}": scores_of(tests[(run.seed, subset, lp, kind)].result()) for lp in sorted({1.0, lenpen})
                }
                for subset in spec.test_subsets
            }
        return entry

    def train_and_validate(self, run: Run, tolerate_failure: bool = False) -> dict:
        """Train, then translate the validation set. A grid run that fails (a setting that diverges: fairseq stops on
        NaN/Inf gradients) is recorded in failed.json and loses the grid instead of ending the study."""
        recorded = self.recorded(run)
        if recorded is not None:
            return recorded.failed or self.evaluate(run, "valid", 1.0)
        SUPERVISOR.check()
        failed = run.dir / "failed.json"
        if failed.exists():
            failure = json.loads(failed.read_text())
        else:
            try:
                run.train(self.threads)
            except RunFailed as e:  # not an interruption (Stopped): that is never recorded as a failure
                if not tolerate_failure:
                    raise
                say(f"[{run.name}] FAILED: {e.what} exited with status {e.returncode}; recorded in {failed}")
                complain(f"{PROG}: {e}")
                failure = {"failed": str(e), "sacrebleu": None, "bleu_tok": None, "bp": None}
                write_atomic(failed, json.dumps(failure))
            else:
                self.finish(run)
                result = self.evaluate(run, "valid", 1.0)
                model = "" if self.primary == "last" else f", {self.primary}"
                say(f"[{run.name}] valid sacreBLEU {result['sacrebleu']:.2f} (beam {self.spec.beam}, lenpen 1{model})")
                return result
        record = self.record_of(run)
        if record is not None:
            record.write_failed(failure)
        return failure

    # -- a fine-tuning study's base model, and parts of a study -------------------------------------------------

    def base_scores(self) -> dict | None:
        """A fine-tuning study's base model evaluated as a run is (beam, length penalty 1.0): on the validation set and
        the test subsets of the study's data (before fine-tuning) and on every extra test; None without ``base``.
        Cached in OUT/base, recorded in RECORD/base like a run."""
        if self.base is None:
            return None
        run = Run(self.run_settings, "base", 0, tag="base")
        run.dir, run.name = self.out / "base", "base"  # one model, no seeds
        record = None if self.record_root is None else RunRecord(self.record_root, Path("base"))
        if record is not None and record.complete:
            record.check_same_base(self.spec.base["sha256"])
        targets = {subset: (subset, None) for subset in ["valid", *self.spec.test_subsets]}
        targets.update({test: (t["subset"], test) for test, t in self.spec.extra_tests.items()})
        scores, names = {}, {}
        for label, (subset, extra) in targets.items():
            names[label] = self.extra_eval_name(extra, "last") if extra else self.eval_name(subset, 1.0)
            if record is not None and record.complete:
                scores[label] = record.evaluation(names[label])
                continue
            out = run.dir / names[label]
            if not out.exists():
                SUPERVISOR.check()
                data = self.extra_data[extra] if extra else None
                run.evaluate(self.threads, subset, 1.0, out, checkpoint=self.base, data=data)
            scores[label] = json.loads(out.read_text())
        if record is not None and not record.complete:
            tests = [name for label, name in names.items() if label != "valid"]
            summary = {
                "run": "base",
                "checkpoint": self.spec.base["checkpoint"],
                "base_sha256": self.spec.base["sha256"],
            }
            record.write(run.dir, list(names.values()), tests, self.target_language(), summary)
        return {
            "checkpoint": self.spec.base["checkpoint"],
            "sha256": self.spec.base["sha256"],
            "valid": scores_of(scores["valid"]),
            "test": {subset: scores_of(scores[subset]) for subset in self.spec.test_subsets},
            "extra_tests": {test: scores_of(scores[test]) for test in self.spec.extra_tests},
        }

    def execute_only(self, names: list[str]) -> list[str]:
        """Train, finish and validate only the runs ``names`` (``OPTIMIZER/SETTING``: its tune-seed run, or
        ``OPTIMIZER/SETTING/seedN``), side by side; a line per run. ToolkitError for a name the spec does not have."""
        runs = [self.run_named(name) for name in names]
        with worker_pool(self.jobs) as self.pool:
            futures = [self.pool.submit(self.train_and_validate, run, True) for run in runs]
            results = [future.result() for future in futures]
        return [
            f"{run.name}: " + ("FAILED" if result.get("failed") else f"valid sacreBLEU {result['sacrebleu']:.2f}")
            for run, result in zip(runs, results, strict=True)
        ]

    def unrecorded(self, count: int) -> list[str]:
        """``--next``: the names of the first ``count`` runs without a complete record, in the order the study trains
        them: every setting at the tune seed, then seed by seed each optimizer whose grid has a single setting (with
        several, the other seeds train the grid's winner, which only the whole study picks: those are left out).
        ToolkitError if the spec has no record (only a record says what is done on a machine that lost the runs), or
        if a record holds a run trained otherwise (:meth:`recorded`)."""
        if self.record_root is None:
            raise ToolkitError("--next: the spec has no 'record': without one, nothing says which runs are done")
        spec = self.spec
        runs = [
            self.run(opt, setting, spec.tune_seed) for opt in spec.optimizers for setting in spec.optimizers[opt].grid
        ]
        runs += [
            self.run(opt, next(iter(spec.optimizers[opt].grid)), seed)
            for seed in spec.seeds
            if seed != spec.tune_seed
            for opt in spec.optimizers
            if len(spec.optimizers[opt].grid) == 1
        ]
        return [run.name for run in runs if self.recorded(run) is None][:count]


def check_configs(spec: StudySpec) -> None:
    """Compose every setting's config as fairseq-hydra-train will (the spec's overrides, then the setting's), so that
    an override Hydra refuses (a key the config does not have, a bad value) stops the study before any run starts,
    naming the setting, rather than failing a training hours in. ToolkitError."""
    from sage_toolkit.hydra_flags import compose

    for name, optimizer in spec.optimizers.items():
        for setting, overrides in optimizer.grid.items():
            try:
                compose(optimizer.config, [*spec.overrides, *overrides])
            except Exception as error:  # Hydra's errors share no base class with a useful name
                message = str(error).strip().replace("\n", " ")
                raise ToolkitError(
                    f"study spec {spec.source}: optimizers.{name}.grid.{setting}: config {optimizer.config} does not "
                    f"compose with the overrides {[*spec.overrides, *overrides]}: {message}",
                    exit_code=2,
                ) from None


def run_study(study: Study, prog: str = PROG) -> dict:
    """Run the study inside a runner session named ``prog`` and write study.json, study.md and the plots; the
    summary (study.json's content). Prints the progress, then the tables and the files written."""
    out, spec = study.out, study.spec
    check_configs(spec)
    out.mkdir(parents=True, exist_ok=True)
    with runner_session(prog, out):
        results = study.execute()
        summary = {"spec": spec.as_read, "spec_file": str(spec.source), "results": results}
        significance = analyses.significance(study, results)
        if significance:
            summary["significance"] = significance
        base = study.base_scores()
        if base is not None:
            summary["base"] = base
        summary["compute"] = compute.compute(study, results)
        write_atomic(out / "study.json", json.dumps(summary, indent=1))
        redundancy = analyses.merged_redundancy(study, results)
        if redundancy is not None:
            analyses.write_redundancy(out / "redundancy", redundancy)
        token_loss = analyses.merged_token_loss(study, results)
        if token_loss is not None:
            analyses.write_token_loss(out / "token_loss", token_loss)
        text = report(spec, results, significance, base, summary["compute"])
        write_atomic(out / "study.md", text)
        plots(out, spec, results)
    say("\n" + text)
    say(f"wrote {out / 'study.md'}, {out / 'study.json'}, learning_curves.png, grid_curves.png, lenpen.png")
    return summary


def retest(study: Study) -> dict:
    """Step 5 again on a finished study, its study.json in ``study.out``: the paired tests recomputed from the runs'
    hypotheses (the record's), study.json rewritten with them (its results unchanged) and study.md regenerated from
    it; plots and analyses untouched. The tests study.json already holds must come out the same (within 1e-6), or
    nothing is written: a study.json made from other hypotheses, or by another sacreBLEU, is refused, not mixed
    with new tests. The summary; ToolkitError naming what is missing or different."""
    out, spec = study.out, study.spec
    path = out / "study.json"
    if not path.is_file():
        raise ToolkitError(f"--retest: no study.json in {out}: run the study first, or give --out its folder")
    summary = json.loads(path.read_text())
    if summary.get("spec") != json.loads(json.dumps(spec.as_read)):
        raise ToolkitError(f"--retest: {path} records another spec ({summary.get('spec_file')}) than {spec.source}")
    # no runner session: nothing is started, each file is written whole, and its lock file would be left in the
    # committed folders this is run on
    significance = analyses.significance(study, summary["results"])
    analyses.check_same_tests(path, summary.get("significance") or {}, significance)
    summary["significance"] = significance
    text = report(spec, summary["results"], significance, summary.get("base"), summary.get("compute"))
    write_atomic(path, json.dumps(summary, indent=1))
    write_atomic(out / "study.md", text)
    say("\n" + text)
    say(f"wrote {path} and {out / 'study.md'} (the paired tests recomputed from the runs' hypotheses)")
    return summary


def run_only(study: Study, names: list[str], prog: str = PROG) -> list[str]:
    """Train, finish and validate only the runs ``names`` (see :meth:`Study.execute_only`) inside a runner session;
    writes no study.json. Prints a line per run."""
    check_configs(study.spec)
    study.out.mkdir(parents=True, exist_ok=True)
    with runner_session(prog, study.out):
        lines = study.execute_only(names)
    say("\n".join(lines))
    return lines
