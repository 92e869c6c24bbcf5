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
