"""The study's protocol, which keeps the test sets out of every decision:

1. Grid: every setting trained with ``tune_seed``; each final model (every run has the same update budget: the average
   of the last ``average_last`` checkpoints, or ``checkpoint_last.pt`` without it) translated on the validation set,
   beam ``beam``, length penalty 1.0. The setting with the highest validation sacreBLEU wins (ties: the lower final
   validation loss).
2. Seeds: the winning setting trained with every seed of ``seeds`` (the tune seed's run is the grid's, reused).
3. Length penalty: each seed's model translates the validation set with every value of ``lenpens``; per optimizer the
   value with the highest mean validation sacreBLEU over its seeds is chosen.
4. Test: each seed's model translates every subset of ``test_subsets`` with length penalty 1.0 and with the chosen one
   (with ``average_last``, the last checkpoint as well, reported beside the average).
5. Significance: every optimizer after the first against the first, sacreBLEU's paired bootstrap on each test subset,
   each optimizer at its chosen length penalty, for every seed both have (seed s against seed s) and for the pooled
   seeds, and the two-level bootstrap over the seed pairs, which resamples the seeds too
   (:mod:`sage_toolkit.significance`).

With a ``record`` folder, every run is evaluated on everything steps 1-4 can ask of it (every subset x length penalty x
checkpoint, and with ``redundancy``/``token_loss`` those analyses of its final model) as soon as it is trained, and its
small outputs are copied there (:mod:`.record`); a recorded run is read from the record and never trained or evaluated
again, so the study resumes on a machine that has the record (committed) but not the runs. The command's ``--only``
trains and records the named runs and stops there.

Outputs in OUT: one folder per run (``OPTIMIZER/SETTING/seedN``: fairseq's log and checkpoints, ``eval.SUBSET.lpX.json``
from scripts/evaluate.py), ``study.json`` (everything measured), ``study.md`` (the tables) and ``learning_curves.png``,
``grid_curves.png``, ``lenpen.png`` (and the merged analyses in ``redundancy/`` and ``token_loss/``). Re-running
resumes: finished trainings and evaluations are read, not redone (a training that completed is never trained further).

Like a comparison (whose runs and process handling it uses, :mod:`sage_toolkit.runner`): SIGINT/SIGTERM stop every child
and start nothing further (exit 128 + the signal, one line on stderr); the output folder and every run folder are
locked while written (another runner refuses, naming the folder and the PID); a run that fails outside the grid stops
the study with its name, log and the end of its error (exit 1). A grid run that fails is recorded in its failed.json
and loses the grid.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from concurrent.futures import Future, as_completed
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.dataset import infer_langs, read_prep
from sage_toolkit.paths import ROOT
from sage_toolkit.runner.console import complain, say
from sage_toolkit.runner.process import SUPERVISOR, RunFailed, runner_session, worker_pool
from sage_toolkit.runner.training import Run, RunSettings, run_env
from sage_toolkit.study.grid import winner
from sage_toolkit.study.record import RunRecord
from sage_toolkit.study.report import plots, report
from sage_toolkit.study.spec import StudySpec

PROG = "sage-study"  # the console script; also the prefix of its messages
SCORE_KEYS = ("bleu_tok", "sacrebleu", "chrf", "bp", "sys_len", "ref_len", "sacrebleu_signature")


class Study:
    """A study of ``spec`` in the folder ``out``: ``jobs`` trainings/evaluations at a time, translation on the CPU
    unless ``cpu`` is False. The data-bin is checked here (ToolkitError if it is not one)."""

    def __init__(self, spec: StudySpec, out: Path, jobs: int, cpu: bool):
        self.spec, self.out = spec, out
        self.data = data_bin(spec.data, "data")
        # a fine-tuning study's other test sets (the base's own domain), checked before any run starts
        self.extra_data = {
            name: data_bin(t["data"], f"extra_tests.{name}.data") for name, t in spec.extra_tests.items()
        }
        for name, folder in self.extra_data.items():  # a run's record keeps every test's hypotheses in one language
            if infer_langs(folder, spec.extra_tests[name]["subset"]) != infer_langs(self.data, spec.test_subsets[0]):
                raise ToolkitError(
                    f"study spec {spec.source}: extra_tests.{name}: {folder} ({spec.extra_tests[name]['subset']}) is "
                    f"not the language pair of {self.data}"
                )
        self.jobs = max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.cpu = cpu
        self.run_settings = RunSettings(
            data=self.data, out=out, overrides=list(spec.overrides), valid_bleu=spec.valid_bleu,
            validate_every=spec.validate_every, verbose=False, beam=spec.beam, lenpen=1.0, cpu=cpu,
        )  # fmt: skip
        self.base = self.check_base()  # a fine-tuning study's base model (its file), else None
        if self.base is not None:  # every run starts from it (after its first launch fairseq resumes its own)
            self.run_settings.overrides.append(f"checkpoint.finetune_from_model={self.base}")
        self.pool = None  # the worker pool, while execute() runs
        record = Path(spec.record) if spec.record else None
        self.record_root = None if record is None else record if record.is_absolute() else ROOT / record
        self.primary = spec.checkpoint_kinds[0]  # the model of every decision and table

    def check_base(self) -> Path | None:
        """The base model's file, whose sha256 must be the spec's; None without ``base``. ToolkitError naming the spec
        otherwise: a study's runs all start from one base."""
        from sage_toolkit.study.base_model import sha256_of

        if self.spec.base is None:
            return None
        path = ROOT / self.spec.base["checkpoint"]
        if not path.is_file():
            raise ToolkitError(f"study spec {self.spec.source}: base.checkpoint {path}: no such file")
        digest = sha256_of(path)
        if digest != self.spec.base["sha256"]:
            raise ToolkitError(
                f"study spec {self.spec.source}: base.checkpoint {path} has sha256 {digest}, the spec declares "
                f"{self.spec.base['sha256']}: a study's runs all start from one base (a new base needs a spec, out and "
                "record of its own)"
            )
        return path

    # -- where results are -----------------------------------------------------------------------------------------

    @staticmethod
    def eval_name(subset: str, lenpen: float, kind: str = "last") -> str:
        """The evaluation file of a run: ``eval.SUBSET.lpX.json`` (last checkpoint), ``eval.SUBSET.lpX.avgN.json``."""
        return f"eval.{subset}.lp{lenpen:g}{'' if kind == 'last' else '.' + kind}.json"

    def record_of(self, run: Run) -> RunRecord | None:
        return None if self.record_root is None else RunRecord(self.record_root, run.dir.relative_to(self.out))

    def recorded(self, run: Run) -> RunRecord | None:
        """The run's record if it is complete (the run is then read from it), else None. ToolkitError if the record
        holds a run trained otherwise than the spec asks (another config, budget or setting)."""
        record = self.record_of(run)
        if record is None or not record.complete:
            return None
        record.check_same_run(run.config, list(self.spec.overrides), run.overrides)
        if self.spec.base is not None:
            record.check_same_base(self.spec.base["sha256"])
        return record

    def training_summary(self, run: Run) -> dict:
        record = self.recorded(run)
        return record.summary() if record is not None else run.training_summary()

    def target_language(self) -> str:
        return infer_langs(self.data, self.spec.test_subsets[0])[1]

    def hypotheses(self, run: Run, subset: str, lenpen: float, kind: str) -> list[str]:
        """The detokenised hypotheses of one evaluation (from the record, else the run folder)."""
        name, tgt = self.eval_name(subset, lenpen, kind), self.target_language()
        record = self.recorded(run)
        if record is not None:
            return record.hypotheses(name, tgt)
        path = run.dir / f"{Path(name).stem}.hyp.{tgt}"
        if not path.is_file():
            raise ToolkitError(f"run {run.name}: no hypotheses {path} (and no record of the run that keeps them)")
        return path.read_text(encoding="utf-8").splitlines()

    # -- units of work (each runs in the pool) ------------------------------------------------------------------

    def run_named(self, name: str) -> Run:
        """The run ``OPTIMIZER/SETTING`` (its tune-seed run) or ``OPTIMIZER/SETTING/seedN``; ToolkitError naming
        ``--only`` for a name the spec does not have."""
        optimizer, setting, *seed = name.split("/")
        if optimizer not in self.spec.optimizers or setting not in self.spec.optimizers[optimizer].grid:
            raise ToolkitError(f"--only {name}: the spec has no optimizer '{optimizer}' with a setting '{setting}'")
        if len(seed) > 1 or (seed and not (seed[0].startswith("seed") and seed[0][4:].isdigit())):
            raise ToolkitError(f"--only {name}: expected OPTIMIZER/SETTING or OPTIMIZER/SETTING/seedN")
        number = int(seed[0][4:]) if seed else self.spec.tune_seed
        if number not in self.spec.seeds:
            raise ToolkitError(f"--only {name}: seed {number} is not one of the spec's seeds {self.spec.seeds}")
        return self.run(optimizer, setting, number)

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

    def run(self, optimizer: str, setting: str, seed: int) -> Run:
        opt = self.spec.optimizers[optimizer]
        return Run(self.run_settings, opt.config, seed, opt.grid[setting], tag=f"{optimizer}/{setting}")

    def extra_eval_name(self, test: str, kind: str | None = None) -> str:
        """The evaluation file of the extra test ``test``: ``eval.TEST.SUBSET.lp1[.avgN].json``."""
        return self.eval_name(f"{test}.{self.spec.extra_tests[test]['subset']}", 1.0, kind or self.primary)

    def evaluate_extra(self, run: Run, test: str, kind: str | None = None) -> dict:
        """The final model on the extra test ``test`` (another data-bin), length penalty 1.0; as :meth:`evaluate`."""
        return self.evaluate(run, self.spec.extra_tests[test]["subset"], 1.0, kind, extra=test)

    def evaluate(self, run: Run, subset: str, lenpen: float, kind: str | None = None, extra: str | None = None) -> dict:
        """scripts/evaluate.py on the final model (``kind``: ``last`` or ``avgN``, default the primary one); cached in
        the run's folder, read from the record for a recorded run. ``extra``: a subset of that extra test's data."""
        kind = kind or self.primary
        name = self.extra_eval_name(extra, kind) if extra else self.eval_name(subset, lenpen, kind)
        record = self.recorded(run)
        if record is not None:
            return record.evaluation(name)
        SUPERVISOR.check()  # a stopping study starts nothing (and creates no run folder)
        out = run.dir / name
        with run.locked():
            if not out.exists():
                data = self.extra_data[extra] if extra else None
                if kind == "last":
                    run.evaluate(
                        self.threads, subset, lenpen, out, checkpoint=run.dir / "checkpoint_last.pt", data=data
                    )
                else:
                    run.evaluate(self.threads, subset, lenpen, out, average_last=self.spec.average_last, data=data)
        return json.loads(out.read_text())

    def finish(self, run: Run) -> None:
        """With a record: evaluate the trained run on every subset x length penalty x checkpoint the protocol can ask
        for (its checkpoints may be gone by the time it asks), then copy the small outputs to the record."""
        record = self.record_of(run)
        if record is None or record.complete:
            return
        spec = self.spec
        names = []
        for kind in spec.checkpoint_kinds:
            for subset in ["valid", *spec.test_subsets]:
                for lenpen in sorted(spec.lenpens, key=lambda lp: lp != 1.0):  # 1.0 first: the grid's number
                    self.evaluate(run, subset, lenpen, kind)
                    names.append(self.eval_name(subset, lenpen, kind))
            for test in spec.extra_tests:
                self.evaluate_extra(run, test, kind)
                names.append(self.extra_eval_name(test, kind))
        if spec.redundancy is not None:
            self.analyze_redundancy(run)
        if spec.token_loss is not None:
            self.analyze_token_loss(run)
        tests = [name for name in names if not name.startswith("eval.valid.")]
        summary = {"run": run.name, "config": run.config, "spec_overrides": list(spec.overrides),
                   "overrides": run.overrides, "lr": run.learning_rate()}  # fmt: skip
        if spec.base is not None:
            summary["base_sha256"] = spec.base["sha256"]
        record.write(run.dir, names, tests, self.target_language(), {**summary, "training": run.training_summary()})
        say(f"[{run.name}] recorded in {record.dir} ({len(names)} evaluations)")

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
            "valid": _scores(scores["valid"]),
            "test": {subset: _scores(scores[subset]) for subset in self.spec.test_subsets},
            "extra_tests": {test: _scores(scores[test]) for test in self.spec.extra_tests},
        }

    def final_checkpoint(self, run: Run) -> Path:
        """The file of the run's final model (the average written by its evaluation, or checkpoint_last.pt)."""
        return run.dir / ("checkpoint_last.pt" if self.primary == "last" else f"checkpoint.{self.primary}.pt")

    def analyze_redundancy(self, run: Run) -> dict:
        """scripts/analyze_redundancy.py on the run's final model, named after the run (its group: the optimizer)."""
        checkpoints = [f"{run.name}={self.final_checkpoint(run)}"]
        return self.analyze(run, "redundancy", checkpoints, self.spec.redundancy_flags())

    def analyze_token_loss(self, run: Run) -> dict:
        """scripts/analyze_token_loss.py on the run's final model (named after the run) and, when that is an average,
        on its last checkpoint too (RUN@last: the one with the optimizer state, for the SAGE multipliers)."""
        checkpoints = [f"{run.name}={self.final_checkpoint(run)}"]
        if self.primary != "last":
            checkpoints.append(f"{run.name}@last={run.dir / 'checkpoint_last.pt'}")
        return self.analyze(run, "token_loss", checkpoints, self.spec.token_loss_flags())

    def analyze(self, run: Run, analysis: str, checkpoints: list[str], flags: list[str]) -> dict:
        """scripts/analyze_ANALYSIS.py on ``checkpoints`` of a trained run into ``run.dir/ANALYSIS``, whose
        ANALYSIS.json it returns; cached there, read from the record for a recorded run."""
        record = self.recorded(run)
        if record is not None:
            return record.analysis(analysis)
        out = run.dir / analysis
        if not (out / f"{analysis}.json").is_file():
            SUPERVISOR.check()
            command = [
                sys.executable, "-m", f"sage_toolkit.{analysis}.command", "--data-bin", str(self.data),
                "--checkpoints", *checkpoints, "--out", str(out), *flags, *(["--cpu"] if self.cpu else []),
            ]  # fmt: skip
            what = f"{analysis.replace('_', '-')} analysis"
            say(f"[{run.name}] {what} of {self.final_checkpoint(run).name}")
            run.run_child(command, run_env(self.threads), run.dir / f"{analysis}.out", what=what)
        return json.loads((out / f"{analysis}.json").read_text())

    def token_loss(self, results: dict) -> dict | None:
        """The per-run token-loss analyses of every optimizer's seed runs merged (models OPTIMIZER/SETTING/seedN,
        each the final model's, with the multipliers measured on its last checkpoint), or None without the spec's
        ``token_loss``."""
        if self.spec.token_loss is None:
            return None
        merged, models = None, {}
        for name, r in results.items():
            for s in r["seeds"]:
                run = self.run(name, r["best_setting"], s["seed"])
                analysis = self.analyze_token_loss(run)
                merged = merged or {k: v for k, v in analysis.items() if k not in ("models", "date")}
                model = dict(analysis["models"][run.name])
                last = analysis["models"].get(f"{run.name}@last")
                if last is not None and "multipliers" in last:
                    model["multipliers"] = {**last["multipliers"], "checkpoint": last["checkpoint"]}
                models[run.name] = model
        return {**merged, "models": models}

    def redundancy(self, results: dict) -> dict | None:
        """The per-run analyses of every optimizer's seed runs merged into one analysis (models named
        OPTIMIZER/SETTING/seedN, grouped by optimizer), or None without the spec's ``redundancy``."""
        from sage_toolkit.redundancy.analysis import summaries

        if self.spec.redundancy is None:
            return None
        merged, models = None, {}
        for name, r in results.items():
            for s in r["seeds"]:
                analysis = self.analyze_redundancy(self.run(name, r["best_setting"], s["seed"]))
                merged = merged or {k: v for k, v in analysis.items() if k not in ("models", "groups", "date")}
                models.update(analysis["models"])
        return {**merged, "models": models, **summaries(models)}

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

    def grid_status(self, optimizer: str) -> dict:
        """What is known of ``optimizer``'s grid now, read from the record and the run folders (nothing is trained or
        evaluated): {setting: {"state": "evaluated" | "failed" | "training" | "not started", "valid_sacrebleu",
        "valid_bp", "final_valid_loss", "updates"}} (the numbers None until known), with the validation "curve" of a
        run that has trained."""
        status = {}
        name = self.eval_name("valid", 1.0, self.primary)
        for setting in self.spec.optimizers[optimizer].grid:
            run = self.run(optimizer, setting, self.spec.tune_seed)
            entry = {"state": "not started", "valid_sacrebleu": None, "valid_bp": None, "final_valid_loss": None,
                     "updates": None}  # fmt: skip
            record = self.recorded(run)
            if record is not None:
                failed = record.failed
                evaluation = None if failed else record.evaluation(name)
                summary = None if failed else record.summary()
            else:
                failed_file = run.dir / "failed.json"
                failed = json.loads(failed_file.read_text()) if failed_file.is_file() else None
                evaluation = json.loads((run.dir / name).read_text()) if (run.dir / name).is_file() else None
                summary = run.training_summary() if (run.dir / "train.log").is_file() else None
            if summary is not None:
                entry.update(final_valid_loss=summary["final_valid_loss"], updates=summary["updates"],
                             curve=summary["curve"])  # fmt: skip
            if failed:
                entry["state"] = "failed"
            elif evaluation is not None:
                entry.update(state="evaluated", valid_sacrebleu=evaluation["sacrebleu"], valid_bp=evaluation["bp"])
            elif summary is not None:
                entry["state"] = "training"
            status[setting] = entry
        return status

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
                "final_valid_loss": self.training_summary(run)["final_valid_loss"],
                "overrides": grid_spec[setting],
                "failed": grid[setting].get("failed"),
            }
        best = winner(scores)
        if best is None:
            raise ToolkitError(f"[{optimizer}] every grid setting failed; see {self.out / optimizer}/*/train.out")
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
            (run.seed, subset, lp, kind): self.pool.submit(self.evaluate, run, subset, lp, kind)
            for run in runs
            for subset in spec.test_subsets
            for lp in sorted({1.0, lenpen})
            for kind in spec.checkpoint_kinds
        }
        seeds = []
        for run in runs:
            entry = {"seed": run.seed, "dir": str(run.dir), **self.training_summary(run)}
            entry["valid"] = {f"{lp:g}": _scores(sweeps[(run.seed, lp)].result()) for lp in spec.lenpens}
            if spec.extra_tests:
                entry["extra_tests"] = {test: _scores(self.evaluate_extra(run, test)) for test in spec.extra_tests}
            for kind in spec.checkpoint_kinds:  # "test": the primary model's; "test_last" beside an average's
                entry["test" if kind == self.primary else f"test_{kind}"] = {
                    subset: {
                        f"{lp:g}": _scores(tests[(run.seed, subset, lp, kind)].result()) for lp in sorted({1.0, lenpen})
                    }
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
            "grid_curves": {s: self.training_summary(self.run(optimizer, s, spec.tune_seed))["curve"] for s in grid},
        }

    def significance(self, results: dict) -> dict:
        """Step 5: every optimizer after the first against the first (the baseline), each at its chosen length
        penalty: {"baseline", "model", "comparisons": {name: {"seeds", "subsets": {subset: {"pairs": [per common
        seed], "pooled"}}}}} ({} for a single optimizer)."""
        from sage_toolkit.evaluation.dataset import resolve_setup

        names = list(results)
        if len(names) < 2:
            return {}
        references, lowercase = {}, {}
        for subset in self.spec.test_subsets:
            setup = resolve_setup(self.data, subset)
            if setup.ref is None:
                raise ToolkitError(f"data {self.data}: no detokenised reference of {subset} for the paired bootstrap")
            references[subset] = Path(setup.ref).read_text(encoding="utf-8").splitlines()
            lowercase[subset] = setup.lowercase
        baseline = names[0]
        comparisons = {}
        for system in names[1:]:
            pair = {baseline: results[baseline], system: results[system]}
            seeds = [
                s["seed"] for s in pair[baseline]["seeds"] if s["seed"] in {t["seed"] for t in pair[system]["seeds"]}
            ]
            subsets = {}
            for subset in self.spec.test_subsets:
                hyps = {
                    name: [
                        self.hypotheses(self.run(name, r["best_setting"], seed), subset, r["lenpen"], self.primary)
                        for seed in seeds
                    ]
                    for name, r in pair.items()
                }
                subsets[subset] = paired_tests(baseline, system, hyps, references[subset], lowercase[subset], seeds)
            comparisons[system] = {"seeds": seeds, "subsets": subsets}
        return {
            "test": "sacreBLEU paired bootstrap (1000 resamples, seed 12345), each optimizer against "
            f"{baseline}, each at its chosen length penalty",
            "two_level_test": TWO_LEVEL_TEST,
            "baseline": baseline,
            "model": self.primary,
            "comparisons": comparisons,
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


TWO_LEVEL_TEST = (
    "two-level paired bootstrap (1000 resamples, seed 12345): the seed pairs with replacement, then the test "
    "sentences with replacement within each drawn pair; statistic: the mean over the drawn pairs of the pair's corpus "
    "score difference; p: sacreBLEU's convention"
)


def paired_tests(
    baseline: str, system: str, hyps: dict[str, list[list[str]]], references: list[str], lowercase: bool, seeds: list
) -> dict:
    """The paired bootstrap of ``system`` against ``baseline`` for each seed pair (``hyps[name][i]``: seed
    ``seeds[i]``'s hypotheses) and for the pooled seeds, and the two-level bootstrap over the seed pairs:
    {"pairs": [...], "pooled": {...}, "two_level": {...}}, each {metric: scores}."""
    from sage_toolkit.significance import paired_bootstrap, pooled, two_level_bootstrap

    def scores(results: dict) -> dict:
        return {m: {baseline: r.baseline, system: r.system, "difference": r.difference, "p_value": r.p_value,
                    "signature": r.signature} for m, r in results.items()}  # fmt: skip

    def test(base_hyps: list[str], sys_hyps: list[str], refs: list[str]) -> dict:
        return scores(paired_bootstrap(base_hyps, sys_hyps, refs, lowercase=lowercase))

    pairs = [{"seed": seed, **test(hyps[baseline][i], hyps[system][i], references)} for i, seed in enumerate(seeds)]
    pooled_base, pooled_refs = pooled(hyps[baseline], references)
    pooled_sys, _ = pooled(hyps[system], references)
    two_level = two_level_bootstrap(hyps[baseline], hyps[system], references, lowercase=lowercase)
    return {"pairs": pairs, "pooled": test(pooled_base, pooled_sys, pooled_refs), "two_level": scores(two_level)}


def data_bin(path: str, key: str) -> Path:
    """A spec's data-bin (relative to the repository root unless absolute), checked: ToolkitError naming ``key``."""
    folder = (ROOT / path).resolve() if not Path(path).is_absolute() else Path(path)
    if not any(folder.glob("dict.*.txt")):
        raise ToolkitError(f"{key} {folder}: not a fairseq data-bin (no dict.*.txt); prepare it with data_prep/")
    read_prep(folder)  # every run reads it: a broken one is refused before the first starts (ToolkitError)
    return folder


def _scores(result: dict) -> dict:
    return {k: result.get(k) for k in SCORE_KEYS}


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
        significance = study.significance(results)
        if significance:
            summary["significance"] = significance
        base = study.base_scores()
        if base is not None:
            summary["base"] = base
        write_atomic(out / "study.json", json.dumps(summary, indent=1))
        redundancy = study.redundancy(results)
        if redundancy is not None:
            write_redundancy(out / "redundancy", redundancy)
        token_loss = study.token_loss(results)
        if token_loss is not None:
            write_token_loss(out / "token_loss", token_loss)
        text = report(spec, results, significance, base)
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
    significance = study.significance(summary["results"])
    _check_same_tests(path, summary.get("significance") or {}, significance)
    summary["significance"] = significance
    text = report(spec, summary["results"], significance, summary.get("base"))
    write_atomic(path, json.dumps(summary, indent=1))
    write_atomic(out / "study.md", text)
    say("\n" + text)
    say(f"wrote {path} and {out / 'study.md'} (the paired tests recomputed from the runs' hypotheses)")
    return summary


def _check_same_tests(path: Path, stored: dict, recomputed: dict) -> None:
    """ToolkitError unless every test ``stored`` holds (study.json's) has the value ``recomputed`` gives it."""
    import math

    def compare(where: str, old, new) -> None:
        if isinstance(old, dict) and isinstance(new, dict) and old.keys() <= new.keys():
            for key in old:
                compare(f"{where}.{key}", old[key], new[key])
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
            for i, (a, b) in enumerate(zip(old, new, strict=True)):
                compare(f"{where}[{i}]", a, b)
        elif isinstance(old, float) and isinstance(new, float):
            if not math.isclose(old, new, rel_tol=0, abs_tol=1e-6):
                raise ToolkitError(
                    f"--retest: {path}: {where} is {old!r} there but {new!r} from the record's hypotheses; study.json "
                    "was made from other hypotheses or another sacreBLEU: nothing written"
                )
        elif old != new:
            raise ToolkitError(
                f"--retest: {path}: {where} is {old!r} there but {new!r} from the record's hypotheses: nothing written"
            )

    compare("significance", stored, recomputed)


def write_redundancy(out: Path, analysis: dict) -> None:
    """The merged redundancy analysis: the analysis' outputs (:func:`sage_toolkit.redundancy.analysis.write_outputs`;
    no sensitivity histograms: they need the raw sensitivities, which the per-run records do not keep) and
    table.txt, the analysis' printed table."""
    from sage_toolkit.redundancy.analysis import write_outputs
    from sage_toolkit.redundancy.summary import table

    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, analysis, None)
    write_atomic(out / "table.txt", table(analysis["models"]) + "\n")


def write_token_loss(out: Path, analysis: dict) -> None:
    """The merged token-loss analysis: token_loss.json and token_loss.md (the per-optimizer summary, then every
    model's table)."""
    from sage_toolkit.token_loss.analysis import OUTPUT, group_table, table

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / OUTPUT, json.dumps(analysis, indent=2) + "\n")
    write_atomic(out / "token_loss.md", group_table(analysis) + "\n" + table(analysis) + "\n")


def run_only(study: Study, names: list[str], prog: str = PROG) -> list[str]:
    """Train, finish and validate only the runs ``names`` (see :meth:`Study.execute_only`) inside a runner session;
    writes no study.json. Prints a line per run."""
    check_configs(study.spec)
    study.out.mkdir(parents=True, exist_ok=True)
    with runner_session(prog, study.out):
        lines = study.execute_only(names)
    say("\n".join(lines))
    return lines
