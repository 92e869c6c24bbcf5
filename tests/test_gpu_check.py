"""The GPU check (scripts/gpu/check_sage_gpu.py) in its CPU smoke mode: every part runs or says why it is skipped
(CUDA graphs, the sync check and FSDP need CUDA), lands in the JSON and the Markdown, which are rewritten after every
part, and the last line printed is the ratio of SAGE's step to fused AdamW's (the numbers of a tiny model on a CPU
mean nothing). With Triton installed, the triton paths run in Triton's interpreter and their parity is checked."""

from __future__ import annotations

import importlib.util
import json

import pytest

from sage_toolkit.errors import ToolkitError
from sage_toolkit.gpu import check, steps
from sage_toolkit.gpu.check import GpuCheckOptions, main, run_check

HAS_TRITON = importlib.util.find_spec("triton") is not None
NEEDS_CUDA = ("adamw_fused_graph", "sage_triton_graph")


@pytest.mark.slow
def test_smoke_mode_writes_json_and_table(tmp_path, capsys):
    report = main(["--out", str(tmp_path), "--smoke"])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
    table = (tmp_path / "gpu_check.md").read_text()
    printed = capsys.readouterr().out
    assert "| model | dtype | optimizer | sync ms | ratio | pipelined ms |" in table and table in printed
    assert printed.strip().splitlines()[-1] == report["closing"] == table.strip().splitlines()[-1]
    assert report["closing"].startswith("SAGE triton step (launch plan) / fused AdamW step on tiny: float32")
    rows = {(r["dtype"], r["variant"]): r for r in report["steps"]}
    assert {v for _, v in rows} == set(steps.STEP_VARIANTS)
    for dtype in ("float32", "bfloat16"):
        assert rows[(dtype, "adamw_fused")]["ratio_to_adamw_fused"] == 1.0
        for variant in NEEDS_CUDA:
            assert rows[(dtype, variant)]["skipped"] == "needs CUDA"
        for variant in ("adamw_fused",) + (("sage_triton_lists", "sage_triton") if HAS_TRITON else ()):
            row = rows[(dtype, variant)]
            assert row["error"] is None and row["skipped"] is None, row
            assert row["sync_ms"] > 0 and row["host_us"] > 0 and row["pipelined_ms"] > 0 and row["state_mb"] > 0
            assert row["kernel_us"] is None  # the profiler's device time: CUDA only
    if HAS_TRITON:
        parity = {p["dtype"]: p for p in report["parity"]}
        for p in parity.values():  # the plan against the list path and the float64 run, parameters and every state
            assert set(p["by_tensor"]) == {"param", "exp_avg", "exp_avg_sq", "exp_avg_sens"}, p
            assert p["max_triton_vs_float64"] == max(t["triton_vs_float64"] for t in p["by_tensor"].values()), p
            assert "max_graph_vs_eager" not in p  # captured: CUDA only
        assert parity["float32"]["max_triton_vs_lists"] < 1e-6 and parity["bfloat16"]["max_triton_vs_lists"] < 1e-2
        assert parity["float32"]["max_triton_vs_float64"] < 1e-5
    assert report["sync"] == {"skipped": "needs CUDA (torch.cuda.set_sync_debug_mode)"}
    assert report["fsdp"] == {"skipped": "fairscale's FullyShardedDataParallel runs on CUDA only"}
    assert [t["run"] for t in report["train"]] == list(check.TRAIN_RUNS)
    for run in report["train"]:
        assert run["error"] is None and run["words_per_second"] > 0, run
    assert report["done"][-1] == "end" and "parity" in report["done"]


def test_a_cut_off_check_leaves_what_it_measured(tmp_path, monkeypatch):
    """The JSON and Markdown are rewritten after every part: a run stopped in the sync check (here a
    KeyboardInterrupt, as a killed run) has its step times and parity on disk."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, "sync_check", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_check(GpuCheckOptions(out=tmp_path, smoke=True, rounds=1, warmup=0, pipeline=1, parity_steps=1,
                                  train=False))  # fmt: skip
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["done"] == ["steps tiny torch.float32", "steps tiny torch.bfloat16", "parity"]
    assert len(saved["steps"]) == 2 * len(steps.STEP_VARIANTS) and len(saved["parity"]) == 2
    assert saved["closing"].startswith("SAGE triton step") or not HAS_TRITON
    assert "parts done: steps tiny torch.float32" in (tmp_path / "gpu_check.md").read_text()


def test_refuses_without_a_gpu_unless_smoke(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ToolkitError, match="no CUDA device.*--smoke"):
        run_check(GpuCheckOptions(out=tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--smoke", "--rounds", "0"])
    assert exit_info.value.code == 1 and not (tmp_path / "gpu_check.json").exists()


def test_bare_machine_bundle_gets_the_fairseq_sdist_through_pip_only(tmp_path):
    """scripts/gpu/bare_machine_bundle.sh when pip cannot download fairseq's sdist: a clear error naming the remedies,
    no other way to the package index (a curl or wget on PATH is never called), the earlier bundle left in place."""
    import os
    import shutil
    import subprocess
    import sys

    from sage_toolkit.paths import ROOT

    script = ROOT / "scripts" / "gpu" / "bare_machine_bundle.sh"
    assert "://" not in script.read_text()  # no package index's address in the script
    repo, calls = tmp_path / "repo", tmp_path / "calls.log"
    (repo / "scripts" / "gpu").mkdir(parents=True)
    shutil.copy(script, repo / "scripts" / "gpu")
    (repo / ".devbundle").mkdir()
    (repo / ".devbundle" / "env.sh").write_text("# the earlier bundle\n")
    stubs = {  # pip's download fails as with no reachable index; the rest of the venv's Python is the real one
        repo / ".venv" / "bin" / "python": f"""if [ "$1 $2 $3" = "-m pip download" ]; then
  echo "pip $*" >> {calls}; echo "ERROR: No matching distribution found for fairseq==0.12.2" >&2; exit 1
fi
exec {sys.executable} "$@"
""",
        tmp_path / "bin" / "curl": f'echo "curl $*" >> {calls}; exit 1\n',
        tmp_path / "bin" / "wget": f'echo "wget $*" >> {calls}; exit 1\n',
    }
    for path, body in stubs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", PYBIN=sys.executable)

    def bundle(**extra_env) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", repo / "scripts" / "gpu" / "bare_machine_bundle.sh"], capture_output=True,
                              text=True, env={**env, **extra_env}, timeout=120)  # fmt: skip

    proc = bundle()
    assert proc.returncode == 1, proc.stderr
    assert "No matching distribution found for fairseq==0.12.2" in proc.stderr  # pip's own message is shown
    assert "bare_machine_bundle: pip could not download fairseq 0.12.2's source distribution" in proc.stderr
    assert "FAIRSEQ_SDIST=/path/to/fairseq-0.12.2.tar.gz" in proc.stderr
    lines = calls.read_text().splitlines()  # pip only: no curl or wget call
    assert len(lines) == 1 and lines[0].startswith(
        "pip -m pip download -q --no-deps --no-binary fairseq fairseq==0.12.2 "
    )
    assert (repo / ".devbundle" / "env.sh").read_text() == "# the earlier bundle\n"
    proc = bundle(FAIRSEQ_SDIST=str(tmp_path / "missing.tar.gz"))
    assert proc.returncode == 1 and f"FAIRSEQ_SDIST={tmp_path / 'missing.tar.gz'} is not a file" in proc.stderr
    assert len(calls.read_text().splitlines()) == 1  # no download tried
