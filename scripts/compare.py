#!/usr/bin/env python
"""Adam versus SAGE: train a pair of Hydra configs over N seeds, evaluate, tabulate, plot.

    python scripts/compare.py --configs demo_adam demo_sage --seeds 1 2 3 --data data-bin/demo --out runs/demo

For every (config, seed) it runs `fairseq-hydra-train --config-dir configs --config-name CONFIG` into
OUT/CONFIG/seedN (validating with BLEU during training, so the learning curves have both validation loss and BLEU),
then `scripts/evaluate.py` on the test set, and finally writes OUT/results.json, OUT/results.md and
OUT/learning_curves.png. Re-running skips finished runs (those with an eval file) and resumes unfinished ones from
their checkpoint_last.pt; a training that already completed (fairseq logged the end of training, or checkpoint_last.pt
reached optimization.max_update) is never trained further. With --jobs 2 two runs train at the same time, one core each.

Children (fairseq-hydra-train, scripts/evaluate.py) run in their own process groups. SIGINT (Ctrl-C), SIGTERM or SIGHUP
stops every one of them (SIGTERM to the group, SIGKILL after 10 s), starts nothing further and exits with 128 + the
signal number (130 for Ctrl-C) and a one-line message. A run that fails stops the runner the same way (the others
resume on the next call) and prints the run's name, its log and the end of its error; exit status 1. The output folder
is locked while a runner works in it (OUT/.runner.lock) and every run folder while a trainer or evaluation writes it
(OUT/.../seedN/.lock, held by the children too, so an orphaned trainer still holds it): another runner refuses,
naming the folder and the PID that holds it. A lock whose holder died is taken over.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
_print_lock = threading.Lock()
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "536870912",
}


RUNNER_LOCK = ".runner.lock"  # in the output folder: held by the runner (compare.py or study.py) while it works there
RUN_LOCK = ".lock"  # in a run's folder: held by the runner and by the children that write the folder
GRACE_S = 10.0  # seconds between SIGTERM and SIGKILL when children are stopped


def say(message: str) -> None:
    with _print_lock:
        print(message, flush=True)


def complain(message: str) -> None:
    """A message for stderr (errors, warnings, the interruption)."""
    with _print_lock:
        sys.stdout.flush()
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Errors, child processes, signals, locks
# ----------------------------------------------------------------------------------------------------------------------


class RunnerError(Exception):
    """A user-facing failure; the message names the run, folder or file at fault. The runner prints it, exit 1."""


class RunFailed(RunnerError):
    """A child (training or evaluation) exited with a non-zero status."""

    def __init__(self, name: str, what: str, returncode: int, logfile: Path, tail: list[str]):
        self.name, self.what, self.returncode, self.logfile, self.tail = name, what, returncode, logfile, tail
        lines = "".join(f"\n  | {line}" for line in tail) or "\n  | (no output)"
        super().__init__(f"[{name}] {what} failed (exit status {returncode}); log: {logfile}; its end:{lines}")


class RunLocked(RunnerError):
    """A folder is locked by another live process."""


class Stopped(BaseException):
    """The runner is stopping (a signal, or a run failed): raised where a child would start or has been stopped."""


class Interrupted(Stopped):
    """SIGINT/SIGTERM/SIGHUP: raised in the main thread by the signal handler."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


class Supervisor:
    """The runner's children: each started in its own process group, all stopped together.

    One per process (signals are per process). ``stop`` acts once: SIGTERM to every child's group, SIGKILL to what is
    left after GRACE_S; ``kill_all`` (a second Ctrl-C) sends SIGKILL at once."""

    def __init__(self):
        self.mutex = threading.RLock()  # re-entrant: the signal handler may run while the main thread holds it
        self.children: dict[int, subprocess.Popen] = {}
        self.stopping = False
        self.signum: int | None = None
        self.stopped = 0  # children running when the stop began
        self.timer: threading.Timer | None = None

    def reset(self) -> None:
        with self.mutex:
            if self.timer is not None:
                self.timer.cancel()
            self.children.clear()
            self.stopping, self.signum, self.stopped, self.timer = False, None, 0, None

    def check(self) -> None:
        if self.stopping:
            raise Stopped()

    def popen(self, command: list[str], lock_fd: int | None = None, **kwargs) -> subprocess.Popen:
        """Start a child in a new session (its own process group); ``lock_fd`` is inherited by it."""
        with self.mutex:
            self.check()
            pass_fds = () if lock_fd is None else (lock_fd,)
            proc = subprocess.Popen(command, start_new_session=True, pass_fds=pass_fds, **kwargs)
            self.children[proc.pid] = proc
            return proc

    def finish(self, proc: subprocess.Popen) -> int:
        """Wait for a child, kill whatever is left of its process group, reap it; its exit status."""
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: the group id stays reserved
        with self.mutex:  # unregistered before it is reaped: kill_all never signals a group id that may be reused
            self._signal([proc.pid], signal.SIGKILL)  # stragglers (data loader workers, evaluate's fairseq-generate)
            self.children.pop(proc.pid, None)
        return proc.wait()

    def stop(self, signum: int | None = None) -> bool:
        """Start nothing more; send SIGTERM to every child's process group (SIGKILL to what is left after GRACE_S).
        Only the first call acts; it returns True."""
        with self.mutex:
            if self.stopping:
                return False
            self.stopping, self.signum = True, signum
            groups = list(self.children)
            self.stopped = len(groups)
            self._signal(groups, signal.SIGTERM)
            if groups:
                self.timer = threading.Timer(GRACE_S, self.kill_all, [groups])
                self.timer.daemon = True
                self.timer.start()
            return True

    def kill_all(self, groups: list[int] | None = None) -> None:
        """SIGKILL to the process groups of the children (of those given) that have not been reaped yet: an
        unreaped child keeps its group id reserved, so no other process can be hit."""
        with self.mutex:
            self._signal([pid for pid in self.children if groups is None or pid in groups], signal.SIGKILL)

    @staticmethod
    def _signal(groups: list[int], sig: int) -> None:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)


SUPERVISOR = Supervisor()
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_stop_children():
    """While inside: SIGINT/SIGTERM/SIGHUP stop every child and raise Interrupted in the main thread (once; a second
    signal only escalates to SIGKILL, so the cleanup is not interrupted). The previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if SUPERVISOR.stop(signum):
            raise Interrupted(signum)
        SUPERVISOR.kill_all()  # already stopping: no second exception in the middle of the cleanup

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)  # None: a handler not set from Python


@contextlib.contextmanager
def worker_pool(workers: int):
    """A thread pool that, when its block ends with an exception, stops every child and cancels what has not begun."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        yield pool
    except BaseException:
        SUPERVISOR.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


_locks_mutex = threading.Lock()
_held: dict[Path, list] = {}  # lock file -> [fd, number of holders in this process]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: it holds nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _holders(fd: int) -> list[tuple[str, int]]:
    """The (role, PID) lines of a lock file: the runner that took it and the children it gave it to."""
    found = []
    for line in os.pread(fd, 1 << 16, 0).decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            found.append((parts[0], int(parts[1])))
    return found


def acquire(directory: Path, name: str = RUN_LOCK) -> int:
    """Lock ``directory/name`` (flock, never waits; re-entrant within this process); its file descriptor.

    Raises RunLocked naming the folder and the live PIDs that hold it. A lock file left by a dead holder is free
    (flock locks die with their processes) and is taken over with a note."""
    path = (Path(directory) / name).absolute()
    with _locks_mutex:
        if path in _held:
            _held[path][1] += 1
            return _held[path][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = _holders(fd)
            os.close(fd)
            runners = [pid for role, pid in holders if role == "runner"]
            gone = "" if not runners or _alive(runners[0]) else ", which is no longer running"
            who, stop = [], []
            for role, pid in holders:
                if not _alive(pid):
                    continue
                if role == "runner":
                    who.append(f"PID {pid} (a runner)")
                    stop.append(f"kill -INT {pid}")
                else:
                    started = f"started by the runner PID {runners[0]}{gone}" if runners else "started by a runner"
                    who.append(f"PID {pid} (a training or evaluation {started})")
                    stop.append(f"kill -TERM -- -{pid}")
            raise RunLocked(
                f"{path.parent} is in use: {', '.join(who) or 'a process that did not record its PID'} holds its lock "
                f"{path}; wait for it to finish" + (f" or stop it ({'; '.join(stop)})" if stop else "")
            ) from None
        stale = list(dict.fromkeys(pid for _, pid in _holders(fd)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"runner {os.getpid()}\n".encode(), 0)
        _held[path] = [fd, 1]
    if stale:
        say(f"{path.parent}: took over the lock left by PID {', '.join(map(str, stale))} (no longer running)")
    return fd


def release(directory: Path, name: str = RUN_LOCK) -> None:
    path = (Path(directory) / name).absolute()
    with _locks_mutex:
        entry = _held[path]
        entry[1] -= 1
        if entry[1] == 0:
            del _held[path]
            os.ftruncate(entry[0], 0)  # an empty lock file: released cleanly (a non-empty free one: its holder died)
            os.close(entry[0])


@contextlib.contextmanager
def locked(directory: Path, name: str = RUN_LOCK):
    fd = acquire(directory, name)
    try:
        yield fd
    finally:
        release(directory, name)


def note_child(fd: int, pid: int) -> None:
    """Record a child that inherited the lock, so that a refusal can name it after the runner is gone."""
    with _locks_mutex:
        os.pwrite(fd, f"child {pid}\n".encode(), os.fstat(fd).st_size)


def check_not_in_use(out: Path) -> None:
    """Refuse an output folder in which some run folder is still locked (e.g. a trainer orphaned by a killed runner)."""
    for lock in sorted(out.rglob(RUN_LOCK)):
        with locked(lock.parent, lock.name):
            pass


@contextlib.contextmanager
def runner_session(prog: str, out: Path):
    """What compare.py and study.py run inside: signals stop every child, the output folder is locked, and the end
    is one line on stderr and an exit status (128 + signal on a signal, 1 on an error) instead of a traceback."""
    SUPERVISOR.reset()
    with signals_stop_children():
        try:
            with locked(out, RUNNER_LOCK):
                check_not_in_use(out)
                yield
        except Stopped as e:
            SUPERVISOR.stop()
            signum = e.signum if isinstance(e, Interrupted) else SUPERVISOR.signum or signal.SIGINT
            n = SUPERVISOR.stopped
            complain(
                f"{prog}: interrupted by {signal.Signals(signum).name}: stopped {n} running child process group(s), "
                "started nothing further; run the same command again to resume"
            )
            raise SystemExit(128 + signum) from None
        except RunnerError as e:
            SUPERVISOR.stop()
            head, _, rest = str(e).partition("\n")
            if isinstance(e, RunFailed) and SUPERVISOR.stopped:
                head += f" (stopped {SUPERVISOR.stopped} other running child process group(s); they resume next time)"
            complain(f"{prog}: error: {head}" + (f"\n{rest}" if rest else ""))
            raise SystemExit(1) from None


def write_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temporary file beside it, then one rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def savefig_atomic(fig, path: Path, **kwargs) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_WARNING = re.compile(r"^(?:\S.*|<frozen [^>]+>):\d+: \w*Warning\b")


def error_tail(logfile: Path, start: int, limit: int = 15) -> list[str]:
    """The last meaningful lines a child wrote to logfile after byte ``start``: from its last Python traceback if it
    has one, else what follows the last Python warning (fairscale and Hydra warn at every start); at most ``limit``."""
    try:
        with open(logfile, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.rstrip()[:400] for line in text.splitlines() if line.strip()]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        lines = lines[tracebacks[-1] :]
        return lines if len(lines) <= limit else [lines[0], "..."] + lines[-(limit - 2) :]
    begin = 0
    for i, line in enumerate(lines):
        if _WARNING.match(line):  # skip the warning: its message lines up to its indented source line
            end = next((j for j in range(i + 1, len(lines)) if re.match(r"^  \S", lines[j])), i)
            begin = end + 1
    return (lines[begin:] or lines)[-limit:]


def read_log(path: Path) -> dict[str, list[dict]]:
    """fairseq's log file (common.log_file with common.log_format=json) -> records: train_inner, train, valid.

    The file holds one JSON object per line for each logged step, without the progress bar's tags, so the kind is
    told by the keys: valid_* (validation), train_* (end-of-epoch summary), else per-interval training statistics.
    """
    records: dict[str, list[dict]] = {"train_inner": [], "train": [], "valid": []}
    if not path.exists():
        return records
    seen = set()
    for line in path.read_text(errors="replace").splitlines():
        start = line.find('{"')
        if start < 0 or line[start:] in seen:
            # fairseq 0.12's progress_bar() adds one more FileHandler for common.log_file at every call (each epoch),
            # so from epoch k on every record is written k times: keep the first copy
            continue
        seen.add(line[start:])
        try:
            raw = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        kind = "valid" if "valid_loss" in raw else "train" if "train_loss" in raw else "train_inner"
        if kind != "train_inner" or "num_updates" in raw:
            records[kind].append({k: _number(v) for k, v in raw.items()})
    return records


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class Run:
    """One training run: OUT/TAG/seedN (TAG: the config name unless given), trained with extra Hydra overrides."""

    def __init__(
        self, args: argparse.Namespace, config: str, seed: int, overrides: list[str] = (), tag: str | None = None
    ):
        self.args, self.config, self.seed, self.overrides = args, config, seed, list(overrides)
        self.dir = args.out / (tag or config) / f"seed{seed}"
        self.name = f"{tag or config}/seed{seed}"
        self.eval_file = self.dir / "eval.test.json"

    @property
    def finished(self) -> bool:
        return self.eval_file.exists()

    def train_command(self) -> list[str]:
        prep = _prep_settings(self.args.data)
        overrides = [
            f"task.data={self.args.data.resolve()}",
            f"common.seed={self.seed}",
            f"checkpoint.save_dir={self.dir.resolve()}",
            "common.log_format=json",
            f"common.log_file={(self.dir / 'train.log').resolve()}",
            "checkpoint.no_epoch_checkpoints=true",
        ]
        if self.args.valid_bleu:
            overrides += [
                "++task.eval_bleu=true",
                # greedy, and at most 1.2 x source length + 10 tokens: an untrained model never stops on its own
                '++task.eval_bleu_args=\'{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}\'',
                "++task.eval_bleu_detok=" + ("space" if prep.get("remove_bpe") == "sentencepiece" else "moses"),
                f"++task.eval_bleu_remove_bpe={prep.get('remove_bpe') or '@@ '}",
            ]
        if self.args.validate_every:
            overrides.append(f"dataset.validate_interval_updates={self.args.validate_every}")
        return [
            sys.executable,
            "-m",
            "fairseq_cli.hydra_train",
            "--config-dir",
            str(CONFIG_DIR),
            "--config-name",
            self.config,
            *overrides,
            *self.args.override,
            *self.overrides,
        ]

    def eval_command(
        self, subset: str = "test", lenpen: float | None = None, out: Path | None = None, checkpoint: Path | None = None
    ) -> list[str]:
        """scripts/evaluate.py on this run (default: its save dir's best/last checkpoint, the test set, --lenpen)."""
        return [
            sys.executable,
            str(ROOT / "scripts" / "evaluate.py"),
            "--data-bin",
            str(self.args.data),
            "--checkpoint",
            str(checkpoint or self.dir),
            "--subset",
            subset,
            "--beam",
            str(self.args.beam),
            "--lenpen",
            str(self.args.lenpen if lenpen is None else lenpen),
            "--out",
            str(out or self.eval_file),
            *(["--cpu"] if self.args.cpu else []),
        ]

    def locked(self):
        """The run folder's lock (re-entrant in this process; the children started by _stream inherit it)."""
        return locked(self.dir, RUN_LOCK)

    def execute(self, threads: int) -> None:
        SUPERVISOR.check()  # a stopping runner starts no further run
        if self.finished:
            made = json.loads(self.eval_file.read_text())
            if (made.get("beam"), made.get("lenpen")) != (self.args.beam, self.args.lenpen):
                raise RunnerError(
                    f"[{self.name}] {self.eval_file} was made with beam {made.get('beam')} and length penalty "
                    f"{made.get('lenpen')}, this comparison asks for --beam {self.args.beam} --lenpen "
                    f"{self.args.lenpen}: give another --out, or delete the eval.test.* files of the runs"
                )
            say(f"[{self.name}] finished earlier: skipped ({self.eval_file})")
            return
        with self.locked():
            self.train(threads)
            self._stream(self.eval_command(), run_env(threads), self.dir / "eval.out")
        result = json.loads(self.eval_file.read_text())
        say(f"[{self.name}] test BLEU {result['bleu_tok']:.2f} (tokenized), sacreBLEU {result['sacrebleu']:.2f}")

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
            start = time.time()
            try:
                self._stream(self.train_command(), env, self.dir / "train.out")
            finally:
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
        reached the max_update (or max_epoch, stop_time_hours) of the configuration it was trained with."""
        log = self.dir / "train.log"
        if log.exists() and any("done training in" in line for line in log.read_text(errors="replace").splitlines()):
            return f"fairseq logged the end of its training in {log}"
        checkpoint = self.dir / "checkpoint_last.pt"
        if not checkpoint.exists():
            return None
        import torch

        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
            num_updates = int(state["optimizer_history"][-1]["num_updates"])
            optimization = state["cfg"]["optimization"]
            next_epoch = int(state["extra_state"]["train_iterator"]["epoch"])
            trained_s = float(state["extra_state"].get("previous_training_time") or 0.0)
        except Exception as e:
            raise RunnerError(
                f"[{self.name}] cannot read {checkpoint} ({type(e).__name__}: {e}); an interrupted save may have cut "
                "it short: delete it (and timing.json) to train this run again from the start"
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

    def _stream(self, command: list[str], env: dict, logfile: Path, what: str | None = None) -> None:
        """Run a command in its own process group (it inherits the run's lock), keep its output in logfile, and
        show fairseq's progress lines (and evaluate.py's warnings, on stderr) prefixed by the run.

        Raises RunFailed (with the end of its output) if it fails, Stopped if the runner stopped it."""
        what = what or ("training" if logfile.name == "train.out" else "evaluation")
        with self.locked() as lock_fd:
            start = logfile.stat().st_size if logfile.exists() else 0
            with open(logfile, "a") as out:
                proc = SUPERVISOR.popen(
                    command, lock_fd=lock_fd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True, errors="replace",
                )  # fmt: skip
                note_child(lock_fd, proc.pid)
                try:
                    for line in proc.stdout:
                        out.write(line)
                        if line.startswith("evaluate: WARNING"):
                            complain(f"[{self.name}] {line.rstrip()}")
                            continue
                        status = self.args.verbose and line.rstrip() or _progress(line)
                        if status:
                            say(f"[{self.name}] {status}")
                except BaseException:
                    SUPERVISOR._signal([proc.pid], signal.SIGTERM)
                    raise
                finally:
                    code = SUPERVISOR.finish(proc)
            SUPERVISOR.check()  # stopped by the runner: not a failure of the run
            if code != 0:
                raise RunFailed(self.name, what, code, logfile, error_tail(logfile, start))

    def summary(self) -> dict:
        result = json.loads(self.eval_file.read_text())
        return {
            "config": self.config,
            "seed": self.seed,
            "bleu_tok": result["bleu_tok"],
            "sacrebleu": result["sacrebleu"],
            "chrf": result.get("chrf"),
            "bp": result.get("bp"),
            "sacrebleu_signature": result.get("sacrebleu_signature"),
            **self.training_summary(),
        }

    def training_summary(self) -> dict:
        """What fairseq's log and timing.json say of the training: losses, updates, time, speed, validation curve."""
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
            "words_per_s": statistics.median(wps) if wps else None,
            "curve": [
                {
                    "update": int(r.get("valid_num_updates", 0)),
                    "valid_loss": r.get("valid_loss"),
                    "valid_bleu": r.get("valid_bleu"),
                }
                for r in valid
            ],
        }


def run_env(threads: int) -> dict[str, str]:
    """The environment of a training or evaluation subprocess: its thread count, unbuffered output, glibc malloc."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    # keep freed tensor memory in the process instead of returning it to the OS after every step: on this
    # project's CPU machine it cut the system time of a demo training run from 12.4 s to 1.5 s per 30 updates
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    return env


def _progress(line: str) -> str | None:
    """A short status from one of fairseq's JSON progress lines (training statistics or validation), else None."""
    start = line.find('{"')
    if start < 0:
        return None
    try:
        rec = json.loads(line[start:])
    except json.JSONDecodeError:
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


def _prep_settings(data: Path) -> dict:
    prep = data / "prep.json"
    return json.loads(prep.read_text()) if prep.exists() else {}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


METRICS = [
    ("bleu_tok", "tok. BLEU", 2),
    ("sacrebleu", "sacreBLEU", 2),
    ("chrf", "chrF", 2),
    ("bp", "BP", 3),
    ("best_valid_loss", "best valid loss", 3),
    ("train_wall_s", "train time (s)", 0),
    ("words_per_s", "words/s", 0),
]


def aggregate(runs: list[dict], configs: list[str]) -> dict:
    table = {}
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        table[config] = {"seeds": [r["seed"] for r in mine]}
        for key, _, _ in METRICS:
            mean, std = mean_std([r[key] for r in mine])
            table[config][key] = {"mean": mean, "std": std}
    return table


def _cell(entry: dict, digits: int) -> str:
    if entry["mean"] is None:
        return "n/a"
    text = f"{entry['mean']:.{digits}f}"
    return text + (f" ± {entry['std']:.{digits}f}" if entry["std"] is not None else "")


def write_markdown(path: Path, table: dict, runs: list[dict], args: argparse.Namespace) -> str:
    head = "| config | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [f"# {' vs '.join(table)} on {args.data}", "", head, "|" + "---|" * (len(METRICS) + 2)]
    for config, row in table.items():
        cells = [_cell(row[key], digits) for key, _, digits in METRICS]
        lines.append(f"| {config} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± standard deviation over seeds (no ± with one seed). Test set, beam "
        f"{args.beam}, length penalty {args.lenpen}; BP is sacreBLEU's brevity penalty.",
        "",
    ]
    signatures = sorted({r["sacrebleu_signature"] for r in runs if r.get("sacrebleu_signature")})
    lines += [f"sacreBLEU signature: `{s}`" for s in signatures]
    lines += [
        "",
        "| config | seed | tok. BLEU | sacreBLEU | BP | best valid loss | updates |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['config']} | {r['seed']} | {r['bleu_tok']:.2f} | {r['sacrebleu']:.2f} | "
            f"{(r['bp'] or float('nan')):.3f} | {(r['best_valid_loss'] or float('nan')):.3f} | {r['updates']} |"
        )
    text = "\n".join(lines) + "\n"
    write_atomic(path, text)
    return text


def plot(path: Path, runs: list[dict], configs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(configs, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for r in runs:
        curve = [c for c in r["curve"] if c["valid_loss"] is not None]
        label = f"{r['config']} (seed {r['seed']})"
        ax_loss.plot(
            [c["update"] for c in curve],
            [c["valid_loss"] for c in curve],
            marker="o",
            color=colors[r["config"]],
            label=label,
        )
        bleu = [c for c in curve if isinstance(c.get("valid_bleu"), float)]
        ax_bleu.plot(
            [c["update"] for c in bleu],
            [c["valid_bleu"] for c in bleu],
            marker="o",
            color=colors[r["config"]],
            label=label,
        )
    ax_loss.set(xlabel="update", ylabel="validation loss (label-smoothed, base 2)", title="validation loss")
    ax_bleu.set(xlabel="update", ylabel="validation BLEU (greedy, sacreBLEU)", title="validation BLEU")
    for ax in (ax_loss, ax_bleu):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["demo_adam", "demo_sage"],
        help="config names in configs/ (default: demo_adam demo_sage)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="seeds (default: 1)")
    parser.add_argument("--data", type=Path, required=True, help="the prepared data-bin folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (runs, results, plot)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--validate-every", type=int, default=0, help="also validate every N updates")
    parser.add_argument("--no-valid-bleu", dest="valid_bleu", action="store_false", help="validation loss only")
    parser.add_argument("--cpu", action="store_true", help="evaluate on the CPU")
    parser.add_argument("--verbose", action="store_true", help="show every line of fairseq's output")
    parser.add_argument("override", nargs="*", help="Hydra overrides for every run, e.g. optimization.max_update=100")
    args = parser.parse_args(argv)
    args.data, args.out = args.data.absolute(), args.out.absolute()  # the runs start in the repository root
    for config in args.configs:
        if not (CONFIG_DIR / f"{config}.yaml").exists():
            parser.error(f"--configs: no config {CONFIG_DIR / config}.yaml")
    if not any(args.data.glob("dict.*.txt")):
        parser.error(f"--data: {args.data} is not a fairseq data-bin (no dict.*.txt); prepare it with data_prep/")
    args.out.mkdir(parents=True, exist_ok=True)
    with runner_session("compare", args.out):
        return _compare(args)


def _compare(args: argparse.Namespace) -> dict:
    # interleave the optimizers (seed 1 of each, then seed 2 ...), so an interrupted comparison stays balanced
    runs = [Run(args, config, seed) for seed in args.seeds for config in args.configs]
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    with worker_pool(args.jobs) as pool:
        for future in as_completed([pool.submit(run.execute, threads) for run in runs]):
            future.result()  # the first failure stops the others (resumable) and is reported by runner_session

    summaries = [run.summary() for run in runs]
    table = aggregate(summaries, args.configs)
    results = {
        "data": str(args.data),
        "configs": args.configs,
        "seeds": args.seeds,
        "beam": args.beam,
        "lenpen": args.lenpen,
        "overrides": args.override,
        "table": table,
        "runs": summaries,
    }
    write_atomic(args.out / "results.json", json.dumps(results, indent=1))
    text = write_markdown(args.out / "results.md", table, summaries, args)
    plot(args.out / "learning_curves.png", summaries, args.configs)
    say("\n" + text)
    say(f"wrote {args.out / 'results.md'}, {args.out / 'results.json'}, {args.out / 'learning_curves.png'}")
    return results


if __name__ == "__main__":
    main()
