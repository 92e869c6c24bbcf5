"""scripts/compare.py and scripts/study.py run as the user runs them (subprocesses), stopped by signals and started
twice on one output folder: every child process is stopped, nothing further starts, a folder that a trainer writes is
locked. The trainings are tiny models with a budget they never reach: each test stops them itself.

Process checks read /proc (Linux): a runner's children are found by parent PID while it runs, and afterwards neither
they nor any process of their process groups may be alive (zombies count as dead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fairseq_utils import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")]

NEVER_ENDS = ["--cpu", "--no-valid-bleu", "--beam", "1", "optimization.max_update=100000", "dataset.max_tokens=1024",
              "common.log_interval=1"]  # fmt: skip


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent PID, state, process group) of a process, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], int(fields[2])


def _processes() -> dict[int, tuple[int, str, int]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) is not None:
            found[int(entry)] = info
    return found


def descendants(pid: int) -> set[int]:
    procs = _processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] != "Z"


def live_in_groups(groups: set[int]) -> set[int]:
    return {p for p, (_, state, pgid) in _processes().items() if pgid in groups and state != "Z"}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def training(run_dir: Path) -> bool:
    """fairseq logged at least one update of this run (it is past its start-up, in the training loop)."""
    log = run_dir / "train.log"
    return log.exists() and '"num_updates"' in log.read_text(errors="replace")


class Runners:
    """Starts runner processes (each in its own session, like a shell job) and, whatever happens, kills what is left
    of them and of every process they started."""

    def __init__(self, tmp_path: Path):
        self.tmp_path, self.procs, self.known = tmp_path, [], set()

    def start(self, script: str, *args) -> subprocess.Popen:
        n = len(self.procs)
        out, err = open(self.tmp_path / f"runner{n}.out", "w"), open(self.tmp_path / f"runner{n}.err", "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *map(str, args)], cwd=ROOT, env=env,
                                stdout=out, stderr=err, start_new_session=True)  # fmt: skip
        out.close()
        err.close()
        proc.err_path = self.tmp_path / f"runner{n}.err"
        self.procs.append(proc)
        return proc

    def tree(self, proc) -> set[int]:
        """The runner's descendants now (remembered for the final clean-up)."""
        found = descendants(proc.pid)
        self.known |= found | {proc.pid}
        return found

    def cleanup(self) -> None:
        groups = {info[2] for pid in self.known if (info := _stat(pid))} | {p.pid for p in self.procs}
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def runners(tmp_path):
    r = Runners(tmp_path)
    yield r
    r.cleanup()


def assert_everything_stopped(tree: set[int], runner_pid: int) -> None:
    groups = {info[2] for pid in tree if (info := _stat(pid))} | set(tree) | {runner_pid}
    # the runner has reaped its children before it exited: nothing may be left, not even for a moment
    assert not {p for p in tree if alive(p)}, "a child of the runner outlived it"
    assert not live_in_groups(groups), "a process of the runner's children's process groups outlived it"


def interrupted_cleanly(proc, signame: str, code: int) -> str:
    rc = proc.wait(timeout=90)  # the old runner ignored SIGINT (its worker thread went on): this timed out
    err = proc.err_path.read_text()
    assert rc == code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    prog = "sage-" + Path(proc.args[1]).stem  # sage-compare or sage-study: the console scripts' names
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: interrupted by {signame}"), err
    return lines[0]


def test_a_killed_runners_training_time_is_counted_up_to_its_logs_last_write(tmp_path):
    """A runner killed with SIGKILL (or by a restart of the machine) cannot add its time; the next one does, from the
    start it recorded to the last write of fairseq's log, and counts the segment."""
    from sage_toolkit.runner.training import count_killed_segment

    log = tmp_path / "train.log"
    log.write_text("{}\n")
    os.utime(log, (1_000_500.0, 1_000_500.0))
    timing = {"train_seconds": 100.0, "running_since": 1_000_000.0}
    count_killed_segment(timing, log)
    assert timing == {"train_seconds": 600.0, "killed_segments": 1}
    count_killed_segment(timing, log)  # nothing running since: nothing to add
    assert timing == {"train_seconds": 600.0, "killed_segments": 1}
    timing = {"train_seconds": 0.0, "running_since": 1_000_000.0}
    count_killed_segment(timing, tmp_path / "absent.log")  # no log of the segment: counted, no time invented
    assert timing == {"train_seconds": 0.0, "killed_segments": 1}


def test_sigint_stops_every_child_starts_nothing_more_and_writes_nothing_half(demo_bin, tmp_path, runners):
    out = tmp_path / "cmp"
    proc = runners.start("compare.py", "--configs", "demo_adam", "demo_sage", "--jobs", "1", "--data", demo_bin,
                         "--out", out, *NEVER_ENDS)  # fmt: skip
    wait_for(lambda: training(out / "demo_adam" / "seed1") or proc.poll() is not None, 240, "the first training")
    assert proc.poll() is None, proc.err_path.read_text()
    tree = runners.tree(proc)
    assert tree, "the runner has a training child"
    os.kill(proc.pid, signal.SIGINT)  # to the runner's PID only, not to its group: Ctrl-C from a shell reaches both
    message = interrupted_cleanly(proc, "SIGINT", 130)
    assert "stopped 1 running child process group(s)" in message
    assert_everything_stopped(tree, proc.pid)
    assert not (out / "demo_sage").exists(), "no further run may start"
    run = out / "demo_adam" / "seed1"
    assert isinstance(json.loads((run / "timing.json").read_text())["train_seconds"], float)  # whole, not cut
    assert "complete" not in json.loads((run / "timing.json").read_text())
    assert "running_since" not in json.loads((run / "timing.json").read_text()), "a clean stop counted its own time"
    assert not list(out.rglob("*.tmp")) and not (out / "results.md").exists() and not (out / "results.json").exists()
    assert (run / ".lock").read_text() == "", "the run's lock was released"


def test_sigterm_then_a_second_sigint_stop_both_parallel_trainings_without_a_traceback(demo_bin, tmp_path, runners):
    out = tmp_path / "cmp"
    proc = runners.start("compare.py", "--configs", "demo_adam", "demo_sage", "--jobs", "2", "--data", demo_bin,
                         "--out", out, *NEVER_ENDS)  # fmt: skip
    wait_for(
        lambda: all(training(out / c / "seed1") for c in ("demo_adam", "demo_sage")) or proc.poll() is not None,
        240,
        "both trainings",
    )
    assert proc.poll() is None, proc.err_path.read_text()
    tree = runners.tree(proc)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)  # a second signal during the clean-up: SIGKILL to the children, no traceback
    message = interrupted_cleanly(proc, "SIGTERM", 128 + signal.SIGTERM)
    assert "stopped 2 running child process group(s)" in message
    assert_everything_stopped(tree, proc.pid)


def test_a_second_runner_is_refused_and_an_orphaned_trainer_keeps_its_folder_locked(demo_bin, tmp_path, runners):
    out = tmp_path / "cmp"
    args = ["--configs", "demo_adam", "--data", demo_bin, "--out", out, *NEVER_ENDS]
    first = runners.start("compare.py", *args)
    wait_for(lambda: training(out / "demo_adam" / "seed1") or first.poll() is not None, 240, "the training")
    assert first.poll() is None, first.err_path.read_text()
    children = runners.tree(first)
    trainer = next(p for p in children if _stat(p)[0] == first.pid)

    second = runners.start("compare.py", *args)
    assert second.wait(timeout=120) == 1
    err = second.err_path.read_text()
    assert f"{out} is in use" in err and f"PID {first.pid} (a runner)" in err and "Traceback" not in err, err
    assert first.poll() is None and alive(trainer), "the refused runner must not disturb the first one"

    # a runner that dies without a chance to clean up (SIGKILL) leaves its trainer running: the run folder stays
    # locked by it (it inherited the lock), so a new runner on the same folder refuses and names it
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert alive(trainer)
    third = runners.start("compare.py", *args)
    assert third.wait(timeout=120) == 1
    err = third.err_path.read_text()
    run = out / "demo_adam" / "seed1"
    assert f"{run} is in use" in err and f"PID {trainer} (a training or evaluation" in err, err
    assert f"runner PID {first.pid}, which is no longer running" in err and f"kill -TERM -- -{trainer}" in err
    assert alive(trainer), "refused: the orphan is left to the user"


def test_study_sigint_stops_its_children_and_records_no_failure(demo_bin, tmp_path, runners):
    out = tmp_path / "study"
    spec = {
        "data": str(demo_bin), "jobs": 2, "beam": 1, "seeds": [1], "valid_bleu": False,
        "overrides": ["optimization.max_update=100000", "dataset.max_tokens=1024", "common.log_interval=1"],
        "optimizers": {"adam": {"config": "demo_adam", "grid": {"a": ["optimization.lr=[0.001]"]}},
                       "sage": {"config": "demo_sage", "grid": {"a": ["optimization.lr=[0.002]"]}}},
    }  # fmt: skip
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    proc = runners.start("study.py", tmp_path / "spec.yaml", "--out", out)
    runs = [out / "adam" / "a" / "seed1", out / "sage" / "a" / "seed1"]
    wait_for(lambda: all(training(r) for r in runs) or proc.poll() is not None, 240, "both grid trainings")
    assert proc.poll() is None, proc.err_path.read_text()
    tree = runners.tree(proc)

    other = runners.start("study.py", tmp_path / "spec.yaml", "--out", out)  # the same study twice: refused
    assert other.wait(timeout=120) == 1
    assert f"{out} is in use" in other.err_path.read_text() and f"PID {proc.pid}" in other.err_path.read_text()

    os.kill(proc.pid, signal.SIGINT)
    interrupted_cleanly(proc, "SIGINT", 130)
    assert_everything_stopped(tree, proc.pid)
    # an interrupted grid run is not a failed setting: nothing is recorded that would exclude it on the next call
    assert not list(out.rglob("failed.json")) and not (out / "study.json").exists()
