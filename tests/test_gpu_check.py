"""The GPU check (scripts/gpu/check_sage_gpu.py) in its CPU smoke mode: every part runs and lands in the JSON and the
Markdown table (the numbers of a tiny model on a CPU mean nothing). With Triton installed, the triton path runs in
Triton's interpreter and its parity with foreach is checked."""

from __future__ import annotations

import importlib.util
import json

import pytest

from sage_toolkit.errors import ToolkitError
from sage_toolkit.gpu.check import GpuCheckOptions, main, run_check

HAS_TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.slow
def test_smoke_mode_writes_json_and_table(tmp_path, capsys):
    report = main(["--out", str(tmp_path), "--smoke"])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(report))
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| model | dtype | optimizer | ms | ratio |" in table and table in capsys.readouterr().out
    rows = {(r["dtype"], r["variant"]): r for r in report["steps"]}
    assert {v for _, v in rows} == {"adamw_fused", "fairseq_adam", "sage_foreach", "sage_triton"}
    for dtype in ("float32", "bfloat16"):
        assert rows[(dtype, "adamw_fused")]["ratio_to_adamw_fused"] == 1.0
        for variant in ("fairseq_adam", "sage_foreach") + (("sage_triton",) if HAS_TRITON else ()):
            row = rows[(dtype, variant)]
            assert row["error"] is None and row["median_ms"] > 0 and row["state_mb"] > 0, row
        if not HAS_TRITON:
            assert "Triton is not installed" in rows[(dtype, "sage_triton")]["error"]
    if HAS_TRITON:
        parity = {p["dtype"]: p for p in report["parity"]}
        assert parity["float32"]["max_rel_diff"] < 1e-5 and parity["bfloat16"]["max_rel_diff"] < 1e-2, parity
        for p in parity.values():  # each path against the float64 run, for the parameters and every state tensor
            assert set(p["by_tensor"]) == {"param", "exp_avg", "exp_avg_sq", "exp_avg_sens"}, p
            assert p["max_rel_err_triton"] == max(t["triton_vs_float64"] for t in p["by_tensor"].values()), p
        assert parity["float32"]["max_rel_err_triton"] < 1e-5 and parity["float32"]["max_rel_err_foreach"] < 1e-5
        assert "triton vs float64" in table
    assert [t["run"] for t in report["train"]] == ["adam", "adam_sage_foreach"]
    for run in report["train"]:
        assert run["error"] is None and run["words_per_second"] > 0, run


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
