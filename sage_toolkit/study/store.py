"""Where a study's runs and results are: the runs of a spec (``OUT/OPTIMIZER/SETTING/seedN``), their evaluations
and analyses, cached in the run folders and read from the record for a recorded run (:mod:`.record`), and the
recording of a trained run. Every number the protocol (:mod:`.protocol`) asks for comes through here; nothing here
decides anything. docs/experiments.md describes the outputs and the record.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation.dataset import infer_langs, read_prep
from sage_toolkit.paths import ROOT
from sage_toolkit.runner.console import say
from sage_toolkit.runner.process import SUPERVISOR
from sage_toolkit.runner.training import Run, RunSettings, run_env
from sage_toolkit.study.record import RunRecord
from sage_toolkit.study.spec import StudySpec


class StudyRuns:
    """The runs of ``spec`` in the folder ``out`` and what is known of them: ``jobs`` trainings/evaluations at a time
    (each child with its share of the CPUs), translation on the CPU unless ``cpu`` is False. The data-bins (and a
    fine-tuning study's base model) are checked here: ToolkitError if one is not what the spec says."""

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

    # -- the runs and where their results are ----------------------------------------------------------------------

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

    def run(self, optimizer: str, setting: str, seed: int) -> Run:
        opt = self.spec.optimizers[optimizer]
        return Run(self.run_settings, opt.config, seed, opt.grid[setting], tag=f"{optimizer}/{setting}")

    # -- evaluations and analyses of a trained run (cached in its folder, or read from its record) ------------------

    def extra_eval_name(self, test: str, kind: str | None = None) -> str:
        """The evaluation file of the extra test ``test``: ``eval.TEST.SUBSET.lp1[.avgN].json``."""
        return self.eval_name(f"{test}.{self.spec.extra_tests[test]['subset']}", 1.0, kind or self.primary)

    def evaluate_extra(self, run: Run, test: str, kind: str | None = None) -> dict:
        """The final model on the extra test ``test`` (another data-bin), length penalty 1.0; as :meth:`evaluate`."""
        return self.evaluate(run, self.spec.extra_tests[test]["subset"], 1.0, kind, extra=test)

    def evaluate(self, run: Run, subset: str, lenpen: float, kind: str | None = None, extra: str | None = None) -> dict:
        """sage-evaluate on the final model (``kind``: ``last`` or ``avgN``, default the primary one); cached in
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
                model = (
                    {"checkpoint": run.dir / "checkpoint_last.pt"}
                    if kind == "last"
                    else {"average_last": self.spec.average_last}
                )
                run.evaluate(self.threads, subset, lenpen, out, data=data, **model)
        return json.loads(out.read_text())

    def evaluation_results(self, run: Run) -> list[dict]:
        """Every evaluation JSON of the run (sage-evaluate's results: scores, ``elapsed_s``, ``threads`` ...), read
        from the record for a recorded run, else the run folder."""
        record = self.recorded(run)
        folder = record.dir if record is not None else run.dir
        return [json.loads(path.read_text()) for path in sorted(folder.glob("eval.*.json"))]

    def final_checkpoint(self, run: Run) -> Path:
        """The file of the run's final model (the average written by its evaluation, or checkpoint_last.pt)."""
        return run.dir / ("checkpoint_last.pt" if self.primary == "last" else f"checkpoint.{self.primary}.pt")

    def analyze_redundancy(self, run: Run) -> dict:
        """sage-analyze-redundancy on the run's final model, named after the run (its group: the optimizer)."""
        checkpoints = [f"{run.name}={self.final_checkpoint(run)}"]
        return self.analyze(run, "redundancy", checkpoints, self.spec.redundancy_flags())

    def analyze_token_loss(self, run: Run) -> dict:
        """sage-analyze-token-loss on the run's final model (named after the run) and, when that is an average,
        on its last checkpoint too (RUN@last: the one with the optimizer state, for the SAGE multipliers)."""
        checkpoints = [f"{run.name}={self.final_checkpoint(run)}"]
        if self.primary != "last":
            checkpoints.append(f"{run.name}@last={run.dir / 'checkpoint_last.pt'}")
        return self.analyze(run, "token_loss", checkpoints, self.spec.token_loss_flags())

    def analyze(self, run: Run, analysis: str, checkpoints: list[str], flags: list[str]) -> dict:
        """``python -m sage_toolkit.ANALYSIS.command`` on ``checkpoints`` of a trained run into
        ``run.dir/ANALYSIS``, whose ANALYSIS.json it returns; cached there, read from the record for a recorded run."""
        record = self.recorded(run)
        if record is not None:
            return record.analysis(analysis)
        out = run.dir / analysis
        if not (out / f"{analysis}.json").is_file():
            SUPERVISOR.check()
            what = f"{analysis.replace('_', '-')} analysis"
            say(f"[{run.name}] {what} of {self.final_checkpoint(run).name}")
            command = self.analysis_command(analysis, checkpoints, flags, out)
            run.run_child(command, run_env(self.threads), run.dir / f"{analysis}.out", what=what)
        return json.loads((out / f"{analysis}.json").read_text())

    def analysis_command(self, analysis: str, checkpoints: list[str], flags: list[str], out: Path) -> list[str]:
        """The command line of the analysis ``analysis`` (``python -m sage_toolkit.ANALYSIS.command``) of
        ``checkpoints`` into ``out``."""
        return [
            sys.executable, "-m", f"sage_toolkit.{analysis}.command", "--data-bin", str(self.data),
            "--checkpoints", *checkpoints, "--out", str(out), *flags, *(["--cpu"] if self.cpu else []),
        ]  # fmt: skip

    # -- recording -------------------------------------------------------------------------------------------------

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

    # -- reading only ----------------------------------------------------------------------------------------------

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


def data_bin(path: str, key: str) -> Path:
    """A spec's data-bin (relative to the repository root unless absolute), checked: ToolkitError naming ``key``."""
    folder = (ROOT / path).resolve() if not Path(path).is_absolute() else Path(path)
    if not any(folder.glob("dict.*.txt")):
        raise ToolkitError(f"{key} {folder}: not a fairseq data-bin (no dict.*.txt); prepare it with data_prep/")
    read_prep(folder)  # every run reads it: a broken one is refused before the first starts (ToolkitError)
    return folder
