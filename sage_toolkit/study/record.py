"""A study's record: each finished run's small outputs in a folder meant to be committed, so that a long study resumes
on another machine without retraining the runs it has (checkpoints are never committed: too large).

``RECORD/OPTIMIZER/SETTING/seedN/`` holds

- ``eval.SUBSET.lpX.json`` and, with ``average_last``, ``eval.SUBSET.lpX.avgN.json``: every evaluation of the run;
- ``eval.SUBSET.lpX[.avgN].hyp.TGT.gz``: the detokenised hypotheses of the test subsets (the paired bootstrap reads
  them; gzip keeps 24 files per run near 0.5 MB);
- ``config.yaml``: the configuration fairseq trained with (Hydra's record), for provenance;
- ``redundancy.json``: with the spec's ``redundancy``, the redundancy analysis of the run's final model;
- ``token_loss.json``: with the spec's ``token_loss``, the token-loss analysis of its final and last checkpoints;
- ``run.json``: the training summary (validation curve, losses, updates, wall time, words/s; for SAGE runs the
  multiplier's statistics over training, ``sage_stats``) and the learning rate,
  written last: a run folder with ``run.json`` is complete, one without it is ignored (an interrupted copy);
- or ``failed.json`` alone: a grid setting whose training failed.

Because checkpoints may be gone when the protocol asks for a number (the test sets at a length penalty chosen after
every seed has run), a run is evaluated on everything the protocol can ask of it before it is recorded (see
:meth:`sage_toolkit.study.store.StudyRuns.finish`).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from sage_toolkit.atomic import atomic_path, write_atomic
from sage_toolkit.errors import ToolkitError

RUN_FILE = "run.json"
ANALYSES = ("redundancy", "token_loss")  # the per-run analyses a spec may ask for (scripts/analyze_NAME.py)
FAILED_FILE = "failed.json"
# overrides that only change what is measured, never an update (tests/test_diagnostics.py): a record made with or
# without them is the same run
MEASUREMENT_ONLY = ("lr_scheduler.sage_stats_",)


def _trained_with(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+").startswith(MEASUREMENT_ONLY)]


class RunRecord:
    """The record of one run: ``root/OPTIMIZER/SETTING/seedN``."""

    def __init__(self, root: Path, relative: Path):
        self.dir = Path(root) / relative

    @property
    def complete(self) -> bool:
        return (self.dir / RUN_FILE).is_file() or (self.dir / FAILED_FILE).is_file()

    @property
    def failed(self) -> dict | None:
        path = self.dir / FAILED_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def check_same_run(self, config: str, spec_overrides: list[str], overrides: list[str]) -> None:
        """ToolkitError unless the recorded run was trained as asked now: the same Hydra config, the spec's overrides
        for every run and the setting's (in order; the statistics options aside). A record written before run.json
        kept the config and the spec's overrides is checked on the setting's alone."""
        if not (self.dir / RUN_FILE).is_file():
            return
        run = self._read(RUN_FILE)
        asked = {"config": config, "spec_overrides": spec_overrides, "overrides": overrides}
        for key, value in asked.items():
            if key not in run:
                continue
            same = run[key] == value if key == "config" else _trained_with(run[key]) == _trained_with(value)
            if not same:
                raise ToolkitError(
                    f"record {self.dir}: the run was recorded with {key} {run[key]!r}, but the study asks for "
                    f"{value!r}; a record holds one training per run: give this spec a record folder of its own, or "
                    f"delete {self.dir} to train the run again"
                )

    def check_same_base(self, sha256: str) -> None:
        """ToolkitError unless the run was recorded as fine-tuned from the base with this sha256: a study never mixes
        runs that started from two bases."""
        recorded = self._read(RUN_FILE).get("base_sha256") if (self.dir / RUN_FILE).is_file() else sha256
        if recorded != sha256:
            raise ToolkitError(
                f"record {self.dir}: the run was fine-tuned from the base with sha256 {recorded}, but the study starts "
                f"from {sha256}; a study's runs all start from one base: give a new base a spec and record of its own"
            )

    def summary(self) -> dict:
        """The recorded training summary (as :meth:`sage_toolkit.runner.training.Run.training_summary`)."""
        return self._read(RUN_FILE)["training"]

    def evaluation(self, name: str) -> dict:
        """The recorded evaluation ``name`` (e.g. ``eval.valid.lp1.avg5.json``)."""
        return self._read(name)

    def analysis(self, name: str) -> dict:
        """The recorded analysis ``name`` of the run (``redundancy``, ``token_loss``: analyze_NAME.py's JSON)."""
        return self._read(f"{name}.json")

    def hypotheses(self, eval_name: str, tgt: str) -> list[str]:
        """The detokenised hypotheses of the recorded evaluation ``eval_name``, one per test sentence."""
        path = self.dir / f"{Path(eval_name).stem}.hyp.{tgt}.gz"
        if not path.is_file():
            raise ToolkitError(f"record {self.dir}: no {path.name} (only the test subsets' hypotheses are kept)")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read().splitlines()

    def _read(self, name: str) -> dict:
        path = self.dir / name
        if not path.is_file():
            raise ToolkitError(
                f"record {self.dir}: no {name}; the run was recorded without it (a spec changed after the run?): "
                f"delete {self.dir} and run it again"
            )
        return json.loads(path.read_text())

    def write(self, run_dir: Path, evaluations: list[str], hypotheses: list[str], tgt: str, run: dict) -> None:
        """Copy ``evaluations`` (file names in ``run_dir``), gzip the hypotheses of ``hypotheses`` (evaluation file
        names), copy Hydra's config.yaml, then write ``run`` as run.json (last: it marks the record complete)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in evaluations:
            shutil.copyfile(run_dir / name, self.dir / name)
        for name in hypotheses:
            source = run_dir / f"{Path(name).stem}.hyp.{tgt}"
            with atomic_path(self.dir / f"{source.name}.gz") as tmp:
                # mtime=0: the same hypotheses give the same bytes (no spurious change in a commit)
                with (
                    open(source, "rb") as src,
                    open(tmp, "wb") as raw,
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as dst,
                ):
                    shutil.copyfileobj(src, dst)
        config = run_dir / ".hydra" / "config.yaml"
        if config.is_file():
            shutil.copyfile(config, self.dir / "config.yaml")
        for analysis in ANALYSES:
            path = run_dir / analysis / f"{analysis}.json"
            if path.is_file():
                shutil.copyfile(path, self.dir / path.name)
        write_atomic(self.dir / RUN_FILE, json.dumps(run, indent=1))

    def write_failed(self, failure: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / FAILED_FILE, json.dumps(failure))
