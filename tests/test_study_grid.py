"""sage_toolkit.study.grid (the grid's winner and its edges) and `scripts/study.py SPEC --grid`, on synthetic grids and
on the committed record of the converged study."""

from __future__ import annotations

import json

import pytest

from sage_toolkit.study import command as study
from sage_toolkit.study.grid import axes, describe_edges, edges, override_value, winner
from sage_toolkit.study.spec import load_spec
from tests.fairseq_utils import ROOT
from tests.test_study_budget import converged_spec

SAGE_GRID = {  # the converged study's: 2 learning rates x 2 beta3, and a statistics switch that is no axis
    "lr4e-3_b0.6": ["optimization.lr=[0.004]", "optimizer.sage_beta3=0.6", "lr_scheduler.sage_stats_by_kind=true"],
    "lr4e-3_b0.75": ["optimization.lr=[0.004]", "optimizer.sage_beta3=0.75", "lr_scheduler.sage_stats_by_kind=true"],
    "lr8e-3_b0.6": ["optimization.lr=[0.008]", "optimizer.sage_beta3=0.6", "lr_scheduler.sage_stats_by_kind=true"],
    "lr8e-3_b0.75": ["optimization.lr=[0.008]", "optimizer.sage_beta3=0.75", "lr_scheduler.sage_stats_by_kind=true"],
}
ADAM_GRID = {f"lr{v}": [f"optimization.lr=[{v}]"] for v in ("0.002", "0.0035", "0.005", "0.007")}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimization.lr=[0.002]", ("optimization.lr", 0.002)),
        ("optimizer.sage_beta3=0.6", ("optimizer.sage_beta3", 0.6)),
        ("optimization.lr=[ 1e-3 ]", ("optimization.lr", 0.001)),
        ("optimizer.sage_params=attn_ffn", ("optimizer.sage_params", None)),
        ("optimization.lr=[0.001,0.002]", ("optimization.lr", None)),  # a real list: no single value
        ("optimizer.sage_beta3=nan", ("optimizer.sage_beta3", None)),
        ("lr_scheduler.sage_stats_by_kind=true", ("lr_scheduler.sage_stats_by_kind", None)),
    ],
)
def test_override_values(override, expected):
    assert override_value(override) == expected


def test_axes_are_the_numeric_keys_every_setting_sets_and_that_vary():
    assert axes(SAGE_GRID) == {
        "optimization.lr": {s: float(s[2:6]) for s in SAGE_GRID},
        "optimizer.sage_beta3": {s: float(s.split("_b")[1]) for s in SAGE_GRID},
    }
    partial = {"a": ["optimization.lr=[0.1]", "optimizer.sage_beta3=0.6"], "b": ["optimization.lr=[0.2]"]}
    assert list(axes(partial)) == ["optimization.lr"]  # beta3: b leaves it to the config, so no direction
    assert axes({"a": ["optimization.lr=[0.1]"], "b": ["optimization.lr=[0.1]", "x=1"]}) == {}  # constant lr
    assert axes({"only": ["optimization.lr=[0.1]"]}) == {}


def test_every_point_of_a_two_by_two_grid_is_at_two_edges_and_an_inner_value_at_none():
    assert edges(SAGE_GRID, "lr8e-3_b0.6") == {"optimization.lr": "highest", "optimizer.sage_beta3": "lowest"}
    assert edges(SAGE_GRID, "lr4e-3_b0.75") == {"optimization.lr": "lowest", "optimizer.sage_beta3": "highest"}
    assert edges(ADAM_GRID, "lr0.005") == {} and edges(ADAM_GRID, "lr0.0035") == {}
    assert edges(ADAM_GRID, "lr0.002") == {"optimization.lr": "lowest"}
    assert describe_edges(ADAM_GRID, "lr0.007") == "optimization.lr 0.007: the highest of the grid's 0.002, 0.0035, " \
        "0.005, 0.007"  # fmt: skip
    assert describe_edges(ADAM_GRID, "lr0.005").endswith("0.005: inside of the grid's 0.002, 0.0035, 0.005, 0.007")
    assert describe_edges({"a": ["x=1"]}, "a") == ""


def test_the_winner_is_the_best_validation_score_ties_by_loss_failures_aside():
    scores = {
        "a": {"valid_sacrebleu": 30.0, "final_valid_loss": 4.2},
        "b": {"valid_sacrebleu": 31.0, "final_valid_loss": 4.4},
        "c": {"valid_sacrebleu": 31.0, "final_valid_loss": 4.3},
        "d": {"failed": "diverged", "valid_sacrebleu": None},
        "e": {"valid_sacrebleu": None},  # not evaluated yet
    }
    assert winner(scores) == "c"
    assert winner({**scores, "f": {"valid_sacrebleu": 31.0, "final_valid_loss": None}}) == "c"  # no loss loses a tie
    assert winner({"d": scores["d"], "e": scores["e"]}) is None


def test_the_grid_command_reads_record_and_run_folders(tmp_path, capsys):
    """Every committed grid run's numbers come from its record; a run folder with a log and no evaluation is training,
    one with failed.json failed, one without anything not started; the winner is the best evaluated setting."""
    spec_file = converged_spec(tmp_path, extra_settings=("training", "failing", "untrained"))
    out = tmp_path / "out"
    for optimizer in ("adam", "sage"):
        (out / optimizer / "training" / "seed1").mkdir(parents=True)
        log = [{"epoch": 1, "valid_loss": "5.5", "valid_num_updates": "200"},
               {"epoch": 1, "loss": "5.0", "num_updates": "250"}]  # fmt: skip
        (out / optimizer / "training" / "seed1" / "train.log").write_text("\n".join(map(json.dumps, log)) + "\n")
        (out / optimizer / "failing" / "seed1").mkdir(parents=True)
        (out / optimizer / "failing" / "seed1" / "failed.json").write_text(json.dumps({"failed": "NaN"}))
    result = study.main([str(spec_file), "--grid"])
    printed = capsys.readouterr().out
    record = ROOT / "results" / "multi30k_de_en_converged"
    for optimizer, r in result.items():
        settings = r["settings"]
        assert settings["training"] == {"state": "training", "valid_sacrebleu": None, "valid_bp": None,
                                        "final_valid_loss": 5.5, "updates": 250, "excess": None,
                                        "curve": [{"update": 200, "valid_loss": 5.5, "valid_bleu": None,
                                                   "train_loss": None}]}  # fmt: skip
        assert settings["failing"]["state"] == "failed" and settings["untrained"]["state"] == "not started"
        evaluated = {s: v for s, v in settings.items() if v["state"] == "evaluated"}
        assert len(evaluated) >= 3, "the committed record holds at least three grid runs per optimizer"
        for setting, v in evaluated.items():
            recorded = json.loads((record / optimizer / setting / "seed1" / "eval.valid.lp1.avg5.json").read_text())
            assert v["valid_sacrebleu"] == recorded["sacrebleu"] and v["updates"] == 5000
        best = max(evaluated, key=lambda s: evaluated[s]["valid_sacrebleu"])
        assert r["winner"] == best and not r["complete"]
        grid = load_spec(spec_file).optimizers[optimizer].grid
        assert r["edges"] == edges(grid, best)
        assert f"{optimizer}: winner so far (" in printed and f"| {optimizer} | failing | failed |" in printed
        line = next(line for line in printed.splitlines() if line.startswith(f"{optimizer}: winner"))
        assert ("the grid extends that way before the seeds" in line) == bool(r["edges"])
    assert not (out / "study.json").exists()


def test_study_md_names_a_winner_at_the_edge_of_its_grid():
    """The 800-update study's winners (committed) are both at an edge: study.md says which and where."""
    from sage_toolkit.study.report import report
    from sage_toolkit.study.spec import parse_spec

    summary = json.loads((ROOT / "results" / "multi30k_de_en" / "study.json").read_text())
    spec = parse_spec(summary["spec"], ROOT / summary["spec_file"])
    text = report(spec, summary["results"])
    line = next(line for line in text.splitlines() if line.startswith("At an edge of its grid"))
    assert "adam's winner lr5e-3 (optimization.lr 0.005: the highest of the grid's" in line
    assert "optimizer.sage_beta3 0.75: the lowest of the grid's 0.75, 0.9" in line
    results = {name: {**r, "best_setting": "lr2e-3"} for name, r in summary["results"].items() if name == "adam"}
    assert "At an edge" not in report(spec, results)  # an inner winner: no such line


def test_the_grid_command_says_when_a_winner_is_at_an_edge(tmp_path, capsys):
    """The converged study's first 2 x 2 SAGE grid (committed): every point is at an edge of both axes."""
    result = study.main([str(converged_spec(tmp_path, extra_settings=(), first_settings=4)), "--grid"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sage: winner"))
    assert len(result["sage"]["edges"]) == 2 and "at an edge: the grid extends that way before the seeds" in line
