"""Validation loss at matched training loss (sage_toolkit.study.generalization): the training loss of each validation
point from fairseq's log, the excess over reference curves on synthetic curves with known answers, study.md's table
and plot, and `study.py --grid`'s column on the committed record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_toolkit.fairseq_log import read_log
from sage_toolkit.runner.training import validation_curve
from sage_toolkit.study import command as study
from sage_toolkit.study.generalization import converging_points, excess, reference_valid_loss
from sage_toolkit.study.plots import plot_generalization
from sage_toolkit.study.report import generalization, report
from sage_toolkit.study.spec import parse_spec
from tests.fairseq_utils import ROOT
from tests.test_study_budget import converged_spec


def test_each_validation_point_carries_the_mean_training_loss_since_the_previous_one(tmp_path):
    records = [
        {"epoch": 1, "loss": "6.0", "num_updates": "50"},
        {"epoch": 1, "loss": "5.0", "num_updates": "100"},
        {"epoch": 1, "valid_loss": "5.5", "valid_bleu": "3.0", "valid_num_updates": "100"},
        {"epoch": 1, "valid_loss": "5.5", "valid_bleu": "3.0", "valid_num_updates": "100"},  # fairseq's repeat
        {"epoch": 2, "loss": "4.0", "num_updates": "150"},
        {"epoch": 2, "train_loss": "4.5", "train_num_updates": "200"},  # an epoch summary: not an interval
        {"epoch": 2, "valid_loss": "5.0", "valid_num_updates": "200"},
        {"epoch": 3, "valid_loss": "4.9", "valid_num_updates": "250"},  # nothing logged since the last point
    ]
    log = tmp_path / "train.log"
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert validation_curve(read_log(log)) == [
        {"update": 100, "valid_loss": 5.5, "valid_bleu": 3.0, "train_loss": 5.5},
        {"update": 200, "valid_loss": 5.0, "valid_bleu": None, "train_loss": 4.0},
        {"update": 250, "valid_loss": 4.9, "valid_bleu": None, "train_loss": None},
    ]


def curve(shift=0.0, updates=range(200, 2001, 200), slope=0.5):
    """Training loss falling with the updates; validation loss = 1 + slope * training loss + shift."""
    points = []
    for u in updates:
        train = 6.0 - 2.0 * u / 2000
        points.append({"update": u, "train_loss": train, "valid_loss": 1.0 + slope * train + shift})
    return points


def test_the_excess_is_the_shift_at_the_same_training_loss():
    reference = curve()
    result = excess(curve(0.05, updates=range(100, 2001, 100)), [reference])
    assert result["mean"] == pytest.approx(0.05)
    # the last half of the curve's updates (> 1000) where the reference reached that training loss (its own range)
    assert [p["update"] for p in result["points"]] == list(range(1100, 2001, 100))
    assert reference_valid_loss([reference], 4.55) == pytest.approx(1.0 + 0.5 * 4.55)  # interpolated
    assert reference_valid_loss([reference], 3.9) is None  # beyond the reference's lowest training loss: no guess
    # two references: their mean; one that does not reach the point is left out
    other = curve(0.1)
    assert reference_valid_loss([reference, other], 4.5) == pytest.approx(1.0 + 0.5 * 4.5 + 0.05)
    short = curve(1.0, updates=range(200, 801, 200))  # training loss 5.8 ... 5.2 only
    assert reference_valid_loss([reference, short], 4.5) == pytest.approx(1.0 + 0.5 * 4.5)
    # a faster run (the same relation reached in fewer updates) has no excess: speed does not count
    assert excess(curve(updates=range(2200, 4001, 200)), [reference])["mean"] is None  # losses it never reached
    fast = [{**p, "update": p["update"] // 2} for p in curve()]
    assert excess(fast, [reference])["mean"] == pytest.approx(0.0)
    # points without a training loss (records from before it was logged) take no part
    assert excess([{**p, "train_loss": None} for p in curve()], [reference]) == {"points": [], "mean": None}
    assert converging_points([]) == []


def study_results(shifts: dict[str, list[float]]) -> dict:
    return {name: {"seeds": [{"seed": i + 1, "curve": curve(s)} for i, s in enumerate(values)]}
            for name, values in shifts.items()}  # fmt: skip


def test_study_md_tables_the_excess_over_the_baseline_seeds(tmp_path):
    results = study_results({"adam": [0.0, 0.02], "sage": [0.06, 0.08]})
    table = generalization(results)
    assert table["sage"][1] == pytest.approx(0.05) and table["sage"][2] == pytest.approx(0.07)  # over adam's mean
    assert table["adam"][1] == pytest.approx(-0.02) and table["adam"][2] == pytest.approx(0.02)  # the other seed
    assert plot_generalization(tmp_path / "generalization.png", results)
    assert (tmp_path / "generalization.png").stat().st_size > 10_000
    committed = ROOT / "results" / "multi30k_de_en"  # recorded before training losses were kept: no table, no plot
    summary = json.loads((committed / "study.json").read_text())
    assert generalization(summary["results"]) == {}
    assert "matched training loss" not in report(parse_spec(summary["spec"], Path(summary["spec_file"])),
                                                 summary["results"])  # fmt: skip
    assert not plot_generalization(tmp_path / "none.png", summary["results"]) and not (tmp_path / "none.png").exists()
    # the table inside study.md, on the committed study with synthetic curves
    results = json.loads(json.dumps(summary["results"]))
    for name, shift in (("adam", 0.0), ("sage", 0.06)):
        for s in results[name]["seeds"]:
            s["curve"] = curve(shift + 0.01 * s["seed"])
    text = report(parse_spec(summary["spec"], Path(summary["spec_file"])), results)
    assert "## Validation loss at matched training loss (against adam's seed runs)" in text
    assert "| sage | 3 | 0.060 ± 0.010 | 1: +0.050, 2: +0.060, 3: +0.070 |" in text


def test_the_grid_command_prints_the_excess_of_each_run(tmp_path, capsys):
    """On the committed record: every recorded run's excess is the module's on the recorded curves (the first
    optimizer's runs against its other runs)."""
    result = study.main([str(converged_spec(tmp_path, extra_settings=())), "--grid"])
    capsys.readouterr()
    record = ROOT / "results" / "multi30k_de_en_converged"

    def recorded_curve(optimizer, setting):
        return json.loads((record / optimizer / setting / "seed1" / "run.json").read_text())["training"]["curve"]

    adam = [s for s, v in result["adam"]["settings"].items() if v["state"] == "evaluated"]
    for optimizer, r in result.items():
        for setting, v in r["settings"].items():
            if v["state"] != "evaluated":
                continue
            references = [recorded_curve("adam", a) for a in adam if (optimizer, setting) != ("adam", a)]
            expected = excess(recorded_curve(optimizer, setting), references)["mean"]
            assert expected is not None and v["excess"] == pytest.approx(expected)
