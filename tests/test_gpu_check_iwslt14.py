"""scripts/gpu/check_iwslt14.py (sage_toolkit.gpu.iwslt14): the IWSLT'14 configs' short-budget check, its plumbing
run on the CPU (--allow-cpu) with a shrunken model on the tiny demo corpus, and its refusal to run on a CPU by
accident."""

from __future__ import annotations

import json

import pytest

from sage_toolkit.gpu import iwslt14 as gpu_check

_SIZES = (("embed_dim", 16), ("ffn_embed_dim", 32), ("attention_heads", 2), ("layers", 1))
SMALL = [f"model.{part}.{key}={value}" for part in ("encoder", "decoder") for key, value in _SIZES]


@pytest.mark.slow
def test_check_trains_both_configs_records_curves_and_projects_the_cost(demo_bin, tmp_path):
    out = tmp_path / "check"
    tiny = ["dataset.max_tokens=1024", "lr_scheduler.warmup_updates=2", *SMALL]
    report = gpu_check.main(["--data", str(demo_bin), "--out", str(out), "--updates", "4", "--validate-every", "2",
                             "--allow-cpu", *tiny])  # fmt: skip
    assert [r["config"] for r in report["runs"]] == ["iwslt14_de_en_adam", "iwslt14_de_en_sage"]
    for r in report["runs"]:
        assert r["updates"] == 4 and r["seconds_per_update"] > 0
        assert r["projected_full_run_gpu_hours"] == pytest.approx(r["seconds_per_update"] * 50_000 / 3600)
    assert report["device"].startswith("CPU") and "common.cpu=true" in report["overrides"]
    assert json.loads((out / "gpu_check.json").read_text()) == report
    curves = json.loads((out / "results.json").read_text())["runs"]
    assert [[c["update"] for c in run["curve"]] for run in curves] == [[2, 4], [2, 4]]
    assert (out / "learning_curves.png").stat().st_size > 10_000


def test_check_refuses_a_machine_without_a_gpu_unless_told(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path)])
    assert "no CUDA GPU found" in capsys.readouterr().err
