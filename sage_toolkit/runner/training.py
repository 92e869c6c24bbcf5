"""One training run: ``fairseq-hydra-train --config-dir configs --config-name CONFIG`` into ``OUT/TAG/seedN``, then
the evaluation (``sage-evaluate``) on it.

The training validates with BLEU (unless ``valid_bleu`` is off), so the learning curves have both validation loss and
BLEU. Re-running skips a finished run (one with its eval file) and resumes an unfinished one from its
checkpoint_last.pt; a training that already completed (fairseq logged the end of training, or checkpoint_last.pt
reached optimization.max_update) is never trained further. The run folder is locked while the trainer or the
evaluation writes it (the children inherit the lock, see :mod:`sage_toolkit.atomic`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sage_toolkit.atomic import RUN_LOCK, locked, write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation import result as result_metrics
from sage_toolkit.evaluation.dataset import read_prep
from sage_toolkit.fairseq_log import parse_record, read_log, sage_statistics
from sage_toolkit.paths import CONFIG_DIR, ROOT, user_dir_overrides
from sage_toolkit.runner.console import say
from sage_toolkit.runner.process import SUPERVISOR, run_logged

MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "536870912",
}
# the evaluation, run as a child process (python -m, of the installed package) with its command line
EVALUATE = [sys.executable, "-m", "sage_toolkit.evaluation.commands"]


def count_killed_segment(timing: dict, train_log: Path) -> None:
    """Add to ``timing`` the training time of a runner that was killed (SIGKILL, a machine restart) and so could not
    add it itself: from its ``running_since`` to the last write of fairseq's log, which fairseq appends to as it
    trains; ``killed_segments`` counts them. Without a log of that segment nothing is added (nothing is invented)."""
    since = timing.pop("running_since", None)
    if since is None:
        return
    timing["killed_segments"] = timing.get("killed_segments", 0) + 1
    if train_log.exists():
        timing["train_seconds"] += max(0.0, train_log.stat().st_mtime - since)


@dataclass
class RunSettings:
    """What every run of a runner shares: the data, where the runs go, and how they are trained and evaluated."""

    data: Path  # the prepared data-bin (absolute: the children start in the repository root)
    out: Path  # runs go to OUT/TAG/seedN
    overrides: list[str] = field(default_factory=list)  # Hydra overrides for every run
    valid_bleu: bool = True  # validate with greedy BLEU as well as the loss
    validate_every: int = 0  # also validate every N updates (0: at the end of each epoch only)
    verbose: bool = False  # show every line of fairseq's output, not only the progress
    beam: int = 5  # of the test evaluation
    lenpen: float = 1.0  # length penalty of the test evaluation
    cpu: bool = False  # evaluate on the CPU


def run_env(threads: int) -> dict[str, str]:
    """The environment of a training or evaluation subprocess: its thread count, unbuffered output, glibc malloc."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    # keep freed tensor memory in the process instead of returning it to the OS after every step: on this
    # project's CPU machine it cut the system time of a demo training run from 12.4 s to 1.5 s per 30 updates
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    return env


def progress(line: str) -> str | None:
    """A short status from one of fairseq's JSON progress lines (training statistics or validation), else None."""
    rec = parse_record(line)
    if rec is None:
        return None
    if "valid_loss" in rec:
        bleu = f", BLEU {rec['valid_bleu']}" if "valid_bleu" in rec else ""
        return f"update {rec.get('valid_num_updates')}: valid loss {rec['valid_loss']}{bleu}"
    if "loss" in rec and "num_updates" in rec:
        sage = (
            f", SAGE alpha {rec['sage_alpha']}, mean multiplier {rec.get('sage_r_mean')}" if "sage_alpha" in rec else ""
        )
        return f"update {rec['num_updates']}: loss {rec['loss']}, lr {rec.get('lr')}, {rec.get('wps')} words/s{sage}"
    return None


def validation_curve(log: dict[str, list[dict]]) -> list[dict]:
    """The validation points of a :func:`read_log` log: update, validation loss and BLEU, and the training loss over
    the updates since the previous point (the mean of the per-interval losses logged there; None if none was), so
    that validation can be read against training loss (:mod:`sage_toolkit.study.generalization`)."""
    curve, previous = [], 0
    for r in log["valid"]:
        update = int(r.get("valid_num_updates", 0))
        inside = [t for t in log["train_inner"] if previous < t["num_updates"] <= update]
        losses = [t["loss"] for t in inside if isinstance(t.get("loss"), (int, float))]
        curve.append({"update": update, "valid_loss": r.get("valid_loss"), "valid_bleu": r.get("valid_bleu"),
                      "train_loss": statistics.mean(losses) if losses else None})  # fmt: skip
        previous = update
    return curve


class Run:
    """One training run: OUT/TAG/seedN (TAG: the config name unless given), trained with extra Hydra overrides."""

    def __init__(
        self, settings: RunSettings, config: str, seed: int, overrides: list[str] = (), tag: str | None = None
    ):
        self.settings, self.config, self.seed, self.overrides = settings, config, seed, list(overrides)
        self.dir = settings.out / (tag or config) / f"seed{seed}"
        self.name = f"{tag or config}/seed{seed}"
        self.eval_file = self.dir / "eval.test.json"

    @property
    def finished(self) -> bool:
        return self.eval_file.exists()

    def train_command(self) -> list[str]:
        settings = self.settings
        prep = read_prep(settings.data) or {}  # what data_prep wrote about the data-bin (ToolkitError if unreadable)
        overrides = [
            f"task.data={settings.data.resolve()}",
            f"common.seed={self.seed}",
            f"checkpoint.save_dir={self.dir.resolve()}",
            "common.log_format=json",
            f"common.log_file={(self.dir / 'train.log').resolve()}",
            "checkpoint.no_epoch_checkpoints=true",
        ]
        if settings.valid_bleu:
            overrides += [
                "++task.eval_bleu=true",
                # greedy, and at most 1.2 x source length + 10 tokens: an untrained model never stops on its own
                '++task.eval_bleu_args=\'{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}\'',
                "++task.eval_bleu_detok=" + ("space" if prep.get("remove_bpe") == "sentencepiece" else "moses"),
                f"++task.eval_bleu_remove_bpe={prep.get('remove_bpe') or '@@ '}",
            ]
        if settings.validate_every:
            overrides.append(f"dataset.validate_interval_updates={settings.validate_every}")
        return [
            sys.executable,
            "-m",
            "fairseq_cli.hydra_train",
            "--config-dir",
            str(CONFIG_DIR),
            "--config-name",
            self.config,
            *user_dir_overrides(),
            *overrides,
            *settings.overrides,
            *self.overrides,
        ]

    def eval_command(
        self,
        subset: str = "test",
        lenpen: float | None = None,
        out: Path | None = None,
        checkpoint: Path | None = None,
        average_last: int | None = None,
        data: Path | None = None,
    ) -> list[str]:
        """The evaluation (sage-evaluate) of this run (default: its save dir's best/last checkpoint, the test set, the
        settings' length penalty); ``average_last``: the average of the save dir's last N numbered checkpoints;
        ``data``: another data-bin than the one trained on (with the same dictionaries)."""
        if average_last and checkpoint is not None:
            raise ToolkitError("eval_command: average_last averages the run's save dir; give no checkpoint with it")
        return [
            *EVALUATE,
            "--data-bin",
            str(data or self.settings.data),
            "--checkpoint",
            str(checkpoint or self.dir),
            "--subset",
            subset,
            "--beam",
            str(self.settings.beam),
            "--lenpen",
            str(self.settings.lenpen if lenpen is None else lenpen),
            "--out",
            str(out or self.eval_file),
            *(["--average-last", str(average_last)] if average_last else []),
            *(["--cpu"] if self.settings.cpu else []),
        ]

    def locked(self):
        """The run folder's lock (re-entrant in this process; the children started by run_child inherit it)."""
        return locked(self.dir, RUN_LOCK)

    def execute(self, threads: int) -> None:
        """Train (or resume) and evaluate on the test set; a run with its eval file is skipped (if it was made with
        this beam and length penalty: otherwise a ToolkitError)."""
        SUPERVISOR.check()  # a stopping runner starts no further run
        settings = self.settings
        if self.finished:
            made = json.loads(self.eval_file.read_text())
            if (made.get("beam"), made.get("lenpen")) != (settings.beam, settings.lenpen):
                raise ToolkitError(
                    f"[{self.name}] {self.eval_file} was made with beam {made.get('beam')} and length penalty "
                    f"{made.get('lenpen')}, this comparison asks for --beam {settings.beam} --lenpen "
                    f"{settings.lenpen}: give another --out, or delete the eval.test.* files of the runs"
                )
            say(f"[{self.name}] finished earlier: skipped ({self.eval_file})")
            return
        with self.locked():
            self.train(threads)
            self.evaluate(threads)
        result = json.loads(self.eval_file.read_text())
        say(f"[{self.name}] test BLEU {result['bleu_tok']:.2f} (tokenized), sacreBLEU {result['sacrebleu']:.2f}")

    def evaluate(
        self,
        threads: int,
        subset: str = "test",
        lenpen: float | None = None,
        out: Path | None = None,
        checkpoint: Path | None = None,
        average_last: int | None = None,
        data: Path | None = None,
    ) -> None:
        """Run :meth:`eval_command` (its output, evaluate's JSON, goes to ``out``, by default the eval file)."""
        command = self.eval_command(subset, lenpen, out, checkpoint, average_last, data)
        self.run_child(command, run_env(threads), self.dir / "eval.out")

    def train(self, threads: int) -> None:
        """Train (or resume) unless the training completed earlier: fairseq would run one more update on a finished
        run (it resumes from checkpoint_last.pt and stops only after the next update)."""
        SUPERVISOR.check()
        with self.locked():
            env = run_env(threads)
            # wall-clock of training (validation included), summed over resumptions; "complete" once fairseq finished
            timing_file = self.dir / "timing.json"
            timing = json.loads(timing_file.read_text()) if timing_file.exists() else {"train_seconds": 0.0}
            if timing.get("complete"):
                return
            done = self.completed_training()
            if done:
                say(f"[{self.name}] training already complete ({done}): not trained further")
                timing["complete"] = True
                write_atomic(timing_file, json.dumps(timing))
                return
            resumed = (self.dir / "checkpoint_last.pt").exists()
            say(f"[{self.name}] training{' (resuming)' if resumed else ''} with {threads} thread(s): {self.dir}")
            count_killed_segment(timing, self.dir / "train.log")
            start = time.time()
            timing["running_since"] = start  # what a killed runner leaves behind (it cannot add its time itself)
            write_atomic(timing_file, json.dumps(timing))
            try:
                self.run_child(self.train_command(), env, self.dir / "train.out")
            finally:
                del timing["running_since"]
                timing["train_seconds"] += time.time() - start
                write_atomic(timing_file, json.dumps(timing))
            timing.update(complete=True, threads=threads)
            write_atomic(timing_file, json.dumps(timing))
            log = read_log(self.dir / "train.log")
            valid = log["valid"][-1] if log["valid"] else {}
            say(f"[{self.name}] trained in {timing['train_seconds']:.0f} s; "
                f"valid loss {valid.get('valid_loss', float('nan')):.3f}")  # fmt: skip

    def completed_training(self) -> str | None:
        """Why an earlier training of this run is complete (e.g. it ended while no runner waited for it), or None.

        Complete: fairseq logged the end of its training ("done training") in train.log, or checkpoint_last.pt
        reached the max_update (or max_epoch, stop_time_hours) of the configuration it was trained with. An unreadable
        checkpoint_last.pt (cut short by an interrupted save of an older fairseq) is said, and the newest intact
        checkpoint of the folder, which fairseq then resumes from (docs/checkpoints.md), is looked at instead."""
        from sage_toolkit.checkpoint_io import UnreadableCheckpointError, load_checkpoint_file, newest_intact_checkpoint

        log = self.dir / "train.log"
        if log.exists() and any("done training in" in line for line in log.read_text(errors="replace").splitlines()):
            return f"fairseq logged the end of its training in {log}"
        checkpoint = self.dir / "checkpoint_last.pt"
        if not checkpoint.exists():
            return None
        try:
            state = load_checkpoint_file(checkpoint, mmap=True)
        except UnreadableCheckpointError as error:
            found = newest_intact_checkpoint(self.dir, exclude=[checkpoint])
            if found is None:
                raise ToolkitError(
                    f"[{self.name}] {error}, and {self.dir} holds no other intact checkpoint to resume from: move "
                    "the folder aside to train this run from the start"
                ) from None
            checkpoint, updates = found
            say(f"[{self.name}] {error}: training resumes from {checkpoint.name} (update {updates}), the newest "
                "intact checkpoint")  # fmt: skip
            state = load_checkpoint_file(checkpoint, mmap=True)
        try:
            num_updates = int(state["optimizer_history"][-1]["num_updates"])
            optimization = state["cfg"]["optimization"]
            next_epoch = int(state["extra_state"]["train_iterator"]["epoch"])
            trained_s = float(state["extra_state"].get("previous_training_time") or 0.0)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ToolkitError(
                f"[{self.name}] {checkpoint} is not a checkpoint of fairseq-hydra-train ({type(e).__name__}: {e})"
            ) from None
        max_update, max_epoch = optimization.get("max_update") or 0, optimization.get("max_epoch") or 0
        stop_hours = optimization.get("stop_time_hours") or 0
        if max_update > 0 and num_updates >= max_update:
            return f"{checkpoint.name} is at update {num_updates} of optimization.max_update={max_update}"
        if max_epoch > 0 and next_epoch > max_epoch:
            return f"{checkpoint.name} finished epoch {next_epoch - 1} of optimization.max_epoch={max_epoch}"
        if stop_hours > 0 and trained_s > stop_hours * 3600:
            return f"{checkpoint.name} trained {trained_s / 3600:.2f} h of optimization.stop_time_hours={stop_hours}"
        return None

    def run_child(self, command: list[str], env: dict[str, str], logfile: Path, what: str | None = None) -> None:
        """Run a command of this run (a training or an evaluation) in its own process group, holding the run's lock
        (the child inherits it); its output is kept in logfile, fairseq's progress lines (every line with
        ``verbose``) are shown prefixed by the run's name.

        Raises RunFailed (with the end of its output) if it fails, Stopped if the runner stopped it."""
        what = what or ("training" if logfile.name == "train.out" else "evaluation")
        verbose = self.settings.verbose
        with self.locked() as lock_fd:
            run_logged(
                command, name=self.name, what=what, logfile=logfile, env=env, cwd=ROOT, lock_fd=lock_fd,
                status=lambda line: verbose and line.rstrip() or progress(line),
            )  # fmt: skip

    def summary(self) -> dict:
        """The test scores (from the eval file, those results.json keeps) and :meth:`training_summary`."""
        result = json.loads(self.eval_file.read_text())
        return {
            "config": self.config,
            "seed": self.seed,
            **result_metrics.recorded(result, "runs"),
            "lr": self.learning_rate(),
            **self.training_summary(),
        }

    def learning_rate(self) -> float | None:
        """The peak learning rate the run was trained with (``optimization.lr`` of the configuration Hydra recorded in
        the run folder), None where there is no record."""
        import yaml

        record = self.dir / ".hydra" / "config.yaml"
        if not record.exists():
            return None
        lr = (yaml.safe_load(record.read_text()) or {}).get("optimization", {}).get("lr")
        lr = lr[0] if isinstance(lr, list) and lr else lr
        return float(lr) if isinstance(lr, (int, float)) else None

    def training_summary(self) -> dict:
        """What fairseq's log and timing.json say of the training: losses, updates, time, speed, validation curve, and
        for a SAGE run that logged them the multiplier's statistics over training (``sage_stats``, see
        :func:`sage_toolkit.fairseq_log.sage_statistics`)."""
        log = read_log(self.dir / "train.log")
        inner, valid = log["train_inner"], log["valid"]
        wps = [r["wps"] for r in inner if isinstance(r.get("wps"), float)]
        wps = wps or [r["train_wps"] for r in log["train"] if isinstance(r.get("train_wps"), float)]
        timing_file = self.dir / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        return {
            "best_valid_loss": min((r["valid_loss"] for r in valid), default=None),
            "final_valid_loss": valid[-1]["valid_loss"] if valid else None,
            "updates": int(
                max([r["num_updates"] for r in inner] + [r["train_num_updates"] for r in log["train"]], default=0)
            ),  # fmt: skip
            "train_wall_s": timing.get("train_seconds"),
            "train_threads": timing.get("threads"),  # None for a run trained before the runner recorded it
            "words_per_s": statistics.median(wps) if wps else None,
            "curve": validation_curve(log),
            **({"sage_stats": stats} if (stats := sage_statistics(log)) else {}),
        }
