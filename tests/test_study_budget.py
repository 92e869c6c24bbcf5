"""sage_toolkit.study.budget and `scripts/study.py SPEC --budget`: the convergence threshold of a study's budget, on
synthetic curves with known answers and on the committed record of the converged study."""

from __future__ import annotations

import json

import pytest
import yaml

from sage_toolkit.errors import ToolkitError
from sage_toolkit.study import command as study
from sage_toolkit.study.budget import DecayFit, budget, fit_decay, measured_fall
from tests.fairseq_utils import ROOT


def power_curve(floor, scale, decay, updates=range(200, 5001, 200)):
    return [{"update": u, "valid_loss": floor + scale * (u / 1000) ** -decay} for u in updates]


def test_the_fit_recovers_a_power_law_and_its_fall_is_the_derivative():
    fit = fit_decay(power_curve(3.9, 0.8, 0.7) + [{"update": 5200, "valid_loss": None}])
    assert fit.decay == pytest.approx(0.7, abs=0.002)
    assert fit.floor == pytest.approx(3.9, abs=2e-3) and fit.scale == pytest.approx(0.8, abs=2e-3)
    assert fit.points == 21 and fit.rmse < 1e-4  # from update 1,000 on; the None point is skipped
    h = 1.0
    assert fit.fall(5000) == pytest.approx((fit.loss(5000 - h) - fit.loss(5000 + h)) / (2 * h) * 1000, rel=1e-5)


def test_the_measured_fall_is_the_slope_over_the_last_window():
    curve = [{"update": u, "valid_loss": 5.0 - 0.03 * u / 1000} for u in range(200, 3001, 200)]
    curve[0]["valid_loss"] = 9.0  # outside the window: no effect
    assert measured_fall(curve) == pytest.approx(0.03)
    assert measured_fall(curve, window=400) == pytest.approx(0.03)
    with pytest.raises(ToolkitError, match="at least 3 validation points"):
        measured_fall(curve, window=200)
    with pytest.raises(ToolkitError, match="no validation points"):
        measured_fall([])


def test_the_budget_is_the_first_step_where_every_fit_falls_slowly_enough():
    slow, fast = DecayFit(4.0, 1.0, 1.0, 0.0, 10), DecayFit(4.0, 4.0, 1.0, 0.0, 10)  # fall: scale * (1000/t)^2
    assert budget([slow], max_fall=0.0101) == 10000  # 1.0 * 0.1^2 = 0.01
    assert budget([slow], max_fall=0.0099) == 11000  # 1.0 * (1/11)^2 = 0.0083
    assert budget([slow, fast], max_fall=0.0101) == 20000  # 4.0 * 0.05^2 = 0.01
    assert budget([slow], minimum=12500) == 13000  # a multiple of step, at least the minimum
    assert budget([slow], max_fall=0.041, step=500) == 5000
    rising = DecayFit(4.0, -1.0, 1.0, 0.0, 10)
    assert budget([rising], minimum=3000) == 3000
    with pytest.raises(ToolkitError, match="no budget up to"):
        budget([DecayFit(4.0, 1e6, 0.001, 0.0, 10)], limit=50000)  # fall ~ 1000 / (t/1k)
    with pytest.raises(ToolkitError, match="at least one"):
        budget([])
    with pytest.raises(ToolkitError, match="at least 4 validation points"):
        fit_decay(power_curve(3.9, 0.8, 0.7, updates=[200, 400, 1000, 1200, 1400]))


def converged_spec(tmp_path, extra_settings=("untrained",), first_settings=None):
    """The committed converged spec, reading the committed record, with a stand-in data-bin (the budget reads only
    the record), only the first ``first_settings`` settings of each grid (all: None) and, per optimizer,
    ``extra_settings`` that no record holds."""
    raw = yaml.safe_load((ROOT / "studies" / "multi30k_de_en_converged.yaml").read_text())
    for optimizer in raw["optimizers"].values():
        optimizer["grid"] = dict(list(optimizer["grid"].items())[:first_settings])
    data = tmp_path / "bin"
    data.mkdir()
    (data / "dict.de.txt").write_text("")
    raw.update(data=str(data), out=str(tmp_path / "out"), record=str(ROOT / raw["record"]))
    for i, setting in enumerate(extra_settings):
        for optimizer in raw["optimizers"].values():  # the first setting's overrides, and one that is no grid axis
            optimizer["grid"][setting] = [*next(iter(optimizer["grid"].values())), f"common.log_interval={51 + i}"]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(raw))
    return spec


def test_the_budget_command_reads_the_committed_record(tmp_path, capsys):
    """The rule the converged spec declares, applied to its first grid pair (committed): 11,000 updates."""
    result = study.main([str(converged_spec(tmp_path)), "--budget", "adam/lr2e-3", "sage/lr4e-3_b0.6"])
    assert result["budget"] == 11000 and result["max_fall"] == 0.01
    assert [row["run"] for row in result["runs"]] == ["adam/lr2e-3", "sage/lr4e-3_b0.6"]
    assert all(row["update"] == 5000 and 0.03 < row["measured_fall"] < 0.06 for row in result["runs"])
    out = capsys.readouterr().out
    assert "| adam/lr2e-3 | 5000 |" in out and "budget: 11000 updates" in out
    assert not (tmp_path / "out").exists(), "--budget writes nothing"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "adam/untrained"], "--budget adam/untrained: not trained yet"),
        (["--budget", "adam/nope"], "no optimizer 'adam' with a setting 'nope'"),
        (["--budget", "adam/lr2e-3", "--max-fall", "0"], "--max-fall must be > 0"),
        # one job per call, and no option that the job would ignore
        (["--budget", "adam/lr2e-3", "--grid"], "not allowed with argument"),
        (["--grid", "--only", "adam/lr2e-3"], "not allowed with argument"),
        (["--only", "adam/lr2e-3", "--max-fall", "0.02"], "--max-fall is --budget's threshold"),
        (["--grid", "--jobs", "2"], "--jobs: --grid trains and translates nothing"),
        (["--budget", "adam/lr2e-3", "--gpu"], "--gpu: --budget trains and translates nothing"),
        (["--list-checkpoints", "--jobs", "1"], "--jobs: --list-checkpoints trains and translates nothing"),
        (["--retest", "--gpu"], "--gpu: --retest trains and translates nothing"),
        (["--retest", "--grid"], "not allowed with argument"),
        (["--only", "adam/lr2e-3", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    ],
)
def test_budget_errors_name_the_run_or_option(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        study.main([str(converged_spec(tmp_path)), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
