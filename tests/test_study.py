"""scripts/study.py: the tuning protocol end to end on a tiny prepared corpus (grid on validation, seeds, length
penalty, test), a grid setting that fails, resumption, and the spec's errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sage_toolkit.errors import ToolkitError
from sage_toolkit.stats import format_difference
from sage_toolkit.study import command as study  # the command: its main(argv) as `python scripts/study.py` runs it
from sage_toolkit.study.base_model import sha256_of
from sage_toolkit.study.plots import plot_multipliers, plots
from sage_toolkit.study.protocol import Study, check_configs
from sage_toolkit.study.report import lenpen_edges, report
from sage_toolkit.study.spec import load_spec, parse_spec
from tests.fairseq_utils import ROOT

TINY = ["optimization.max_update=4", "dataset.max_tokens=1024", "common.log_interval=2",
        "dataset.validate_interval_updates=2"]  # fmt: skip


def write_spec(path, data, **changes):
    spec = {
        "data": str(data),
        "jobs": 2,
        "beam": 2,
        "seeds": [1, 2],
        "lenpens": [1.0, 1.5],
        "test_subsets": ["test"],
        "subset_names": {"test": "tatoeba-test"},
        "overrides": TINY,
        "optimizers": {
            "adam": {
                "config": "demo_adam",
                "grid": {"lr1": ["optimization.lr=[0.001]"], "lr2": ["optimization.lr=[0.002]"]},
            },
            # beta3 outside [0, 1): the optimizer refuses it at start-up, so this setting's run fails
            "sage": {
                "config": "demo_sage",
                "grid": {"ok": ["optimizer.sage_beta3=0.8"], "bad": ["optimizer.sage_beta3=1.5"]},
            },
        },  # fmt: skip
    }
    spec.update(changes)
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


@pytest.mark.slow
def test_protocol_end_to_end_with_a_failing_setting_and_resumption(demo_bin, tmp_path, capsys):
    spec_file = write_spec(tmp_path / "spec.yaml", demo_bin)
    out = tmp_path / "study"
    summary = study.main([str(spec_file), "--out", str(out)])
    printed = capsys.readouterr().out
    results = summary["results"]

    adam, sage = results["adam"], results["sage"]
    # the grid: both Adam settings scored on validation; the SAGE setting that could not start is recorded, not fatal
    assert set(adam["grid"]) == {"lr1", "lr2"} and not any(g["failed"] for g in adam["grid"].values())
    assert sage["grid"]["bad"]["failed"] and "sage_beta3" in (out / "sage/bad/seed1/train.out").read_text()
    assert sage["best_setting"] == "ok" and "[sage/bad/seed1] FAILED" in printed
    best = max(adam["grid"], key=lambda s: adam["grid"][s]["valid_sacrebleu"])
    assert adam["grid"][best]["valid_sacrebleu"] == adam["grid"][adam["best_setting"]]["valid_sacrebleu"]
    # the grid's score is the evaluation file of the tune seed's run, on the validation set at length penalty 1
    lp1 = json.loads((out / "adam" / adam["best_setting"] / "seed1" / "eval.valid.lp1.json").read_text())
    assert lp1["sacrebleu"] == adam["grid"][adam["best_setting"]]["valid_sacrebleu"] and lp1["lenpen"] == 1.0
    assert "test" not in json.dumps(adam["grid"])  # no test number took part in the choice

    for r in (adam, sage):
        assert [s["seed"] for s in r["seeds"]] == [1, 2]
        means = r["valid_sacrebleu_by_lenpen"]
        assert set(means) == {"1", "1.5"} and r["lenpen"] in (1.0, 1.5)
        assert means[f"{r['lenpen']:g}"] == max(means.values())
        for s in r["seeds"]:
            assert s["updates"] == 4 and [c["update"] for c in s["curve"]] == [2, 4]
            assert set(s["test"]["test"]) == {"1", f"{r['lenpen']:g}"}
            for scores in s["test"]["test"].values():
                assert 0 <= scores["sacrebleu"] <= 100 and scores["sacrebleu_signature"].startswith("nrefs:1")
        mean = sum(s["valid"]["1"]["sacrebleu"] for s in r["seeds"]) / 2
        assert means["1"] == pytest.approx(mean)
    ev = json.loads((out / "adam" / adam["best_setting"] / "seed2" / "eval.test.lp1.json").read_text())
    assert ev["subset"] == "test" and ev["lenpen"] == 1.0 and ev["checkpoint"].endswith("seed2/checkpoint_last.pt")
    table = (out / "study.md").read_text()
    assert "| sage | bad | `optimizer.sage_beta3=1.5` | failed |" in table and "tatoeba-test sacreBLEU" in table
    assert table.count("| sage − adam | |") == 2  # the difference row under both test tables
    assert json.loads((out / "study.json").read_text())["results"] == json.loads(json.dumps(results))
    for png in ("learning_curves.png", "grid_curves.png", "lenpen.png"):
        assert (out / png).stat().st_size > 10_000

    logs = {p: p.stat().st_mtime_ns for p in out.rglob("train.log")}
    evals = {p: p.stat().st_mtime_ns for p in out.rglob("eval.*.json")}
    again = study.main([str(spec_file), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "] training" not in printed and "FAILED" not in printed, "a finished study re-reads, it does not rerun"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("train.log")} == logs
    assert {p: p.stat().st_mtime_ns for p in out.rglob("eval.*.json")} == evals
    assert again["results"] == results

    listed = study.main([str(spec_file), "--out", str(out), "--list-checkpoints"])
    assert list(listed) == ["adam/seed1", "adam/seed2", "sage/seed1", "sage/seed2"]
    assert listed["sage/seed2"] == str(out / "sage" / "ok" / "seed2" / "checkpoint_last.pt")
    assert all(Path(path).is_file() for path in listed.values())
    assert capsys.readouterr().out.split() == [f"{name}={path}" for name, path in listed.items()]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"tune_seed": 7}, "tune_seed 7 is not one of seeds"),
        ({"lenpens": [0.6, 0.8]}, "must include 1.0"),
        ({"bogus": 1}, "unknown key(s) ['bogus']"),
        ({"average_last": 1}, "average_last must be 0 (off) or a number of checkpoints >= 2, got 1"),
        ({"average_last": -2}, "average_last must be 0 (off) or a number of checkpoints >= 2, got -2"),
        ({"average_last": "5"}, "average_last must be 0 (off) or a number of checkpoints >= 2, got '5'"),
        ({"record": ""}, "record must be a folder name"),
        ({"jobs": 0}, "jobs must be an integer >= 1, got 0"),
        ({"beam": 0}, "beam must be an integer >= 1, got 0"),
        ({"beam": 2.5}, "beam must be an integer >= 1, got 2.5"),
        ({"validate_every": -200}, "validate_every must be an integer >= 0, got -200"),
        ({"seeds": [1, 1]}, "seeds must be a non-empty list of distinct integers: [1, 1]"),
        ({"seeds": []}, "seeds must be a non-empty list of distinct integers: []"),
        ({"seeds": 1}, "seeds must be a non-empty list of distinct integers: 1"),
        ({"lenpens": [1.0, "1.2"]}, "lenpens must be a non-empty list of distinct numbers"),
        ({"test_subsets": ["test", "test"]}, "test_subsets must be a non-empty list of distinct strings"),
        ({"redundancy": {"batchez": 2}}, "redundancy.batchez: unknown option"),
        ({"redundancy": {"batches": "2"}}, "redundancy.batches must be a int, got '2'"),
        ({"redundancy": {"by_layer_type": 1}}, "redundancy.by_layer_type must be a bool, got 1"),
        # values the analysis refuses are refused when the spec is read, not after the first run trained
        ({"redundancy": {"sparsities": [0.0, 1.5]}}, "redundancy: --sparsities: each must be in [0, 1), got 1.5"),
        ({"redundancy": {"sparsities": [0.0, "x"]}}, "redundancy: argument --sparsities: invalid float value: 'x'"),
        ({"redundancy": {"batches": 0}}, "redundancy: --batches must be positive, got 0"),
        ({"redundancy": [1]}, "redundancy must be a mapping"),
        ({"token_loss": {"subsetz": ["valid"]}}, "token_loss.subsetz: unknown option"),
        ({"token_loss": {"multiplier_batches": "2"}}, "token_loss.multiplier_batches must be a int, got '2'"),
        ({"token_loss": {"edges": [100, 10]}}, "token_loss: --edges must be increasing positive counts, got 100 10"),
        ({"token_loss": {"multiplier_batches": -1}}, "token_loss: --multiplier-batches must be 0 or more, got -1"),
        ({"token_loss": {"subsets": ["valid", "valid"]}}, "token_loss: --subsets: a split is given twice"),
        ({"token_loss": "valid"}, "token_loss must be a mapping"),
        ({"optimizers": {"adam": {"config": "no_such_config", "grid": {"a": ["x=1"]}}}}, "no_such_config"),
        ({"optimizers": {"adam": {"config": "demo_adam", "grid": {"a": "optimization.lr=[0.1]"}}}}, "list of Hydra"),
        (
            {
                "optimizers": {
                    "adam": {"config": "demo_adam", "grid": {"a": ["x=1"]}},
                    "sage": {"config": "demo_sage", "grid": {"a": ["x=1"], "b": ["x=2"]}},
                }
            },
            "grid of the same size",
        ),  # fmt: skip
    ],
)
def test_spec_errors_name_the_key(tmp_path, change, message):
    spec_file = write_spec(tmp_path / "spec.yaml", tmp_path, **change)
    with pytest.raises(ToolkitError) as err:
        load_spec(spec_file)
    assert message in str(err.value) and str(spec_file) in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        # a value of the wrong type is refused, not converted (OmegaConf would read "yes" as true, 5 as "5")
        ({"valid_bleu": "yes"}, "valid_bleu must be a bool, got 'yes'"),
        ({"valid_bleu": 1}, "valid_bleu must be a bool, got 1"),
        ({"description": 5}, "description must be a str, got 5"),
        ({"subset_names": {"test": 5}}, "subset_names must be a dict[str, str], got {'test': 5}"),
        ({"overrides": "optimization.max_update=5"}, "overrides must be a list[str], got 'optimization.max_update=5'"),
        ({"subset_names": {"test": [1]}}, "subset_names must be a dict[str, str], got {'test': [1]}"),
        ({"optimizers": {"adam": {"config": "demo_adam", "grid": {"a": ["x=1"]}, "lr": 1}}}, "optimizers.adam.lr: Key"),
        ({"tune_seed": "1"}, "tune_seed must be a int, got '1'"),
    ],
)
def test_the_structured_spec_refuses_a_wrong_type_naming_file_and_key(tmp_path, change, message):
    """The spec is an OmegaConf structured config of its dataclass: the type of every key is checked, and the error
    names the file and the key."""
    spec_file = write_spec(tmp_path / "spec.yaml", tmp_path, **change)
    with pytest.raises(ToolkitError) as err:
        load_spec(spec_file)
    assert message in str(err.value) and str(err.value).startswith(f"study spec {spec_file}: ")


@pytest.mark.parametrize("required", ["data", "seeds", "optimizers"])
def test_the_structured_spec_names_a_missing_required_key(tmp_path, required):
    spec_file = write_spec(tmp_path / "spec.yaml", tmp_path)
    spec = json.loads(spec_file.read_text())
    del spec[required]
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ToolkitError, match=f"study spec {spec_file}: '{required}' is missing"):
        load_spec(spec_file)


def test_the_spec_defaults_are_the_dataclass_and_study_json_records_todays(tmp_path):
    """A spec with the required keys only: the defaults come from the dataclass, and study.json's record of the spec
    (as_read) adds the defaults of the keys it always recorded, in their order, and no other."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({"data": "d", "seeds": [3, 4], "optimizers": {"adam": {"config": "demo_adam",
                                     "grid": {"a": ["optimization.lr=[0.001]"]}}}}))  # fmt: skip
    spec = load_spec(spec_file)
    assert (spec.jobs, spec.beam, spec.lenpens, spec.test_subsets, spec.tune_seed, spec.average_last) == (
        1, 5, [1.0], ["test"], 3, 0
    )  # fmt: skip
    assert (spec.description, spec.record, spec.base, spec.extra_tests, spec.valid_bleu) == (
        "Adam vs SAGE", None, None, {}, True
    )  # fmt: skip
    assert list(spec.as_read) == ["data", "seeds", "optimizers", "jobs", "beam", "lenpens", "test_subsets",
                                  "subset_names", "overrides", "validate_every", "valid_bleu", "tune_seed"]  # fmt: skip
    assert spec.as_read["tune_seed"] == 3 and spec.optimizers["adam"].grid == {"a": ["optimization.lr=[0.001]"]}


def test_missing_spec_and_data_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main([str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")])
    assert "nope.yaml: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main([str(write_spec(tmp_path / "s.yaml", tmp_path / "empty")), "--out", str(tmp_path / "o")])
    assert "not a fairseq data-bin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main([str(write_spec(tmp_path / "s.yaml", tmp_path)), "--out", str(tmp_path / "o"), "--list-checkpoints"])
    assert "no finished study there" in capsys.readouterr().err
    spec_file = str(write_spec(tmp_path / "s.yaml", tmp_path))
    (tmp_path / "dict.de.txt").write_text("")  # enough of a data-bin for the names to be checked
    for only, message in [
        ("adam/lr9", "--only adam/lr9: the spec has no optimizer 'adam' with a setting 'lr9'"),
        ("adam/lr1/seed7", "--only adam/lr1/seed7: seed 7 is not one of the spec's seeds [1, 2]"),
        ("adam/lr1/s1", "--only adam/lr1/s1: expected OPTIMIZER/SETTING or OPTIMIZER/SETTING/seedN"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            study.main([spec_file, "--out", str(tmp_path / "o"), "--only", "adam/lr1", only])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    (tmp_path / "prep.json").write_text("{")  # what data_prep wrote, broken: refused before any run starts
    with pytest.raises(SystemExit) as exit_:
        study.main([spec_file, "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and f"cannot read {tmp_path / 'prep.json'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "a bad --only starts nothing"


@pytest.mark.parametrize("only", [None, ["adam/lr1"]])
def test_an_override_hydra_refuses_stops_the_study_before_any_run(tmp_path, capsys, only):
    """A key the config does not have (a typo, or an option its YAML does not list) would fail each run's training
    at start-up, hours into a study: every setting is composed first, and the bad one named."""
    spec_file = write_spec(tmp_path / "s.yaml", tmp_path)
    (tmp_path / "dict.de.txt").write_text("")  # enough of a data-bin for the study to start
    spec = json.loads(spec_file.read_text())
    spec["optimizers"]["sage"]["grid"]["ok"].append("optimizer.sage_beta=0.8")
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(SystemExit) as exit_:
        study.main([str(spec_file), "--out", str(tmp_path / "o"), *(["--only", *only] if only else [])])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert f"study spec {spec_file}: optimizers.sage.grid.ok: config demo_sage does not compose" in err
    assert "Could not override 'optimizer.sage_beta'" in err
    assert not (tmp_path / "o").exists(), "nothing starts"


@pytest.mark.parametrize("name", ["converged", "converged_final", "ablations"])
def test_the_converged_specs_compose(name):
    """Every setting of the converged study's specs composes as fairseq-hydra-train will compose it."""
    check_configs(load_spec(ROOT / "studies" / f"multi30k_de_en_{name}.yaml"))


def test_the_committed_spec_is_valid_and_balanced():
    spec = load_spec(ROOT / "studies" / "multi30k_de_en.yaml")
    assert len(spec.seeds) >= 3 and spec.tune_seed in spec.seeds
    assert {len(o.grid) for o in spec.optimizers.values()} == {4}
    assert spec.optimizers["sage"].config == "multi30k_de_en_sage"


def test_difference_is_the_mean_difference_and_its_standard_error():
    assert format_difference([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], 2) == "+2.00 ± 1.29"  # sqrt(1/3 + 4/3)
    assert format_difference([2.0, 4.0], [1.0, 1.0], 3) == "-2.000 ± 1.000"  # sqrt(2/2 + 0/2)


@pytest.mark.slow
def test_a_recorded_study_resumes_from_its_record_alone(demo_bin, tmp_path, capsys):
    """average_last and record: each run is evaluated on everything (valid and test x lenpens x average and last)
    as soon as it is trained, and recorded; --only trains pieces; a machine with the record but no runs finishes the
    study without training a recorded run, and with every run recorded it trains and translates nothing."""
    record = tmp_path / "record"
    optimizers = {
        "adam": {"config": "demo_adam", "grid": {"lr1": ["optimization.lr=[0.001]"]}},
        "sage": {
            "config": "demo_sage",
            "grid": {"ok": ["optimizer.sage_beta3=0.8", "lr_scheduler.sage_stats_by_kind=true"]},
        },
    }
    keep = ["checkpoint.save_interval_updates=2", "checkpoint.keep_interval_updates=3"]
    redundancy = {"batches": 1, "sparsities": [0.0, 0.5], "by_layer_type": True, "bleu": False}
    token_loss = {"subsets": ["valid", "train"], "max_sentences": 10, "multiplier_batches": 1}
    spec_file = write_spec(
        tmp_path / "spec.yaml", demo_bin, average_last=2, record=str(record), optimizers=optimizers,
        overrides=TINY + keep, redundancy=redundancy, token_loss=token_loss,
    )  # fmt: skip
    out = tmp_path / "study"
    study.main([str(spec_file), "--out", str(out), "--only", "adam/lr1", "sage/ok/seed2"])
    printed = capsys.readouterr().out
    assert "adam/lr1/seed1: valid sacreBLEU" in printed and "sage/ok/seed2: valid sacreBLEU" in printed
    assert not (out / "study.json").exists() and not (out / "sage" / "ok" / "seed1").exists()
    recorded = record / "adam" / "lr1" / "seed1"
    evals = {f"eval.{s}.lp{lp}{k}.json" for s in ("valid", "test") for lp in ("1", "1.5") for k in ("", ".avg2")}
    assert {p.name for p in recorded.glob("eval.*.json")} == evals
    assert {p.name for p in recorded.glob("*.gz")} == {f"{Path(n).stem}.hyp.en.gz" for n in evals if ".test." in n}
    averaged = json.loads((recorded / "eval.valid.lp1.avg2.json").read_text())
    assert averaged["average_last"] == 2 and [Path(c).name for c in averaged["checkpoints"]] == [
        "checkpoint_1_2.pt", "checkpoint_1_4.pt"
    ]  # fmt: skip
    analysed = json.loads((recorded / "redundancy.json").read_text())  # the averaged model's analysis, recorded
    assert list(analysed["models"]) == ["adam/lr1/seed1"] and analysed["sparsities"] == [0.0, 0.5]
    assert analysed["models"]["adam/lr1/seed1"]["checkpoint"].endswith("seed1/checkpoint.avg2.pt")
    assert "results_by_layer_type" in analysed["models"]["adam/lr1/seed1"] and analysed["bleu"] is None
    measured = json.loads((recorded / "token_loss.json").read_text())  # the average, and the last with its state
    assert list(measured["models"]) == ["adam/lr1/seed1", "adam/lr1/seed1@last"] and measured["max_sentences"] == 10
    assert measured["models"]["adam/lr1/seed1"]["checkpoint"].endswith("seed1/checkpoint.avg2.pt")
    assert measured["models"]["adam/lr1/seed1"]["valid"]["sentences"] == 10
    not_sage = measured["models"]["adam/lr1/seed1@last"]["multipliers"]
    assert not_sage == {"measured": False, "reason": "trained with adam, not a SAGE optimizer"}
    run = json.loads((recorded / "run.json").read_text())
    assert run["training"]["updates"] == 4 and run["lr"] == 0.001 and (recorded / "config.yaml").is_file()

    shutil.rmtree(out)  # another machine: the record (committed), not the runs
    summary = study.main([str(spec_file), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "[adam/lr1/seed1] training" not in printed and "[sage/ok/seed2] training" not in printed
    assert "[adam/lr1/seed2] training" in printed and "[sage/ok/seed1] training" in printed
    assert not (out / "adam" / "lr1" / "seed1").exists()
    adam = summary["results"]["adam"]
    seed1 = adam["seeds"][0]
    assert adam["grid"]["lr1"]["valid_sacrebleu"] == averaged["sacrebleu"]  # the grid scores the average
    last = json.loads((recorded / "eval.test.lp1.json").read_text())
    assert seed1["test_last"]["test"]["1"]["sacrebleu"] == last["sacrebleu"]
    assert seed1["test"]["test"]["1"]["sacrebleu"] == json.loads((recorded / "eval.test.lp1.avg2.json").read_text())[
        "sacrebleu"
    ]  # fmt: skip
    assert seed1["curve"] == run["training"]["curve"]
    # the SAGE runs' multiplier statistics (logged every 2 updates here) travel through the record into the table
    assert "sage_stats" not in seed1 and "sage_stats" not in run["training"]
    for sage_seed in summary["results"]["sage"]["seeds"]:
        stats = sage_seed["sage_stats"]
        assert stats["update"] == [2, 4] and stats["alpha"] == [0.0, 0.0]  # alpha ramps from a quarter of the run
        assert {"r_mean", "embed_mult_mean", "attn_r_q50", "ffn_r_gt1", "norm_r_q90"} <= set(stats)
    assert "| sage | attn | 2 |" in (out / "study.md").read_text() and (out / "sage_multipliers.png").is_file()
    significance = summary["significance"]
    assert significance["baseline"] == "adam" and significance["model"] == "avg2"
    assert significance["comparisons"]["sage"]["seeds"] == [1, 2]
    tested = significance["comparisons"]["sage"]["subsets"]["test"]
    assert [pair["seed"] for pair in tested["pairs"]] == [1, 2]
    for scores in [*tested["pairs"], tested["pooled"], tested["two_level"]]:
        for metric in ("BLEU", "chrF"):
            m = scores[metric]
            assert 0 < m["p_value"] <= 1 and m["difference"] == pytest.approx(m["sage"] - m["adam"])
    for name in ("adam", "sage"):  # the two-level test's scores: the mean of the seeds' test scores
        per_seed = [
            s["test"]["test"][f"{summary['results'][name]['lenpen']:g}"] for s in summary["results"][name]["seeds"]
        ]
        assert tested["two_level"]["BLEU"][name] == pytest.approx(sum(c["sacrebleu"] for c in per_seed) / 2, abs=1e-6)
    assert tested["two_level"]["BLEU"]["signature"].startswith("two-level-bs:1000|pairs:2|seed:12345|")
    table = (out / "study.md").read_text()
    assert (
        "## Test, last checkpoint, tuned length penalty" in table and "## Paired bootstrap (sage against adam" in table
    )
    assert "| tatoeba-test | pooled 1,2 |" in table and "| tatoeba-test | two-level 1,2 |" in table
    merged = json.loads((out / "redundancy" / "redundancy.json").read_text())
    assert list(merged["models"]) == ["adam/lr1/seed1", "adam/lr1/seed2", "sage/ok/seed1", "sage/ok/seed2"]
    assert merged["models"]["adam/lr1/seed1"] == analysed["models"]["adam/lr1/seed1"]
    assert set(merged["groups"]) == {"adam", "sage"} and set(merged["groups_by_layer_type"]) >= {"embeddings"}
    assert (out / "redundancy" / "pruning_curves_by_layer_type.png").stat().st_size > 10_000
    losses = json.loads((out / "token_loss" / "token_loss.json").read_text())
    assert list(losses["models"]) == list(merged["models"]) and losses["subsets"] == ["valid", "train"]
    assert losses["models"]["adam/lr1/seed1"]["valid"] == measured["models"]["adam/lr1/seed1"]["valid"]
    sage_multipliers = losses["models"]["sage/ok/seed2"]["multipliers"]  # measured on the last checkpoint
    assert sage_multipliers["measured"] and sage_multipliers["checkpoint"].endswith("seed2/checkpoint_last.pt")
    assert set(sage_multipliers["tensors"]) == {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    summary_md = (out / "token_loss" / "token_loss.md").read_text()
    assert "| band | tokens | adam (2) | sage (2) | sage - adam |" in summary_md
    assert "sage: SAGE multiplier r of the embedding rows, mean ± std over 2 models" in summary_md

    shutil.rmtree(out)  # every run recorded now: nothing is trained or translated, the same study comes out
    again = study.main([str(spec_file), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "] training" not in printed and not any(out.glob("*/*/seed*")), printed
    assert again == summary
    assert json.loads((out / "redundancy" / "redundancy.json").read_text()) == merged
    assert json.loads((out / "token_loss" / "token_loss.json").read_text())["models"] == losses["models"]

    # --retest: a study.json written before the two-level test gets it from the record's hypotheses, study.md with it
    table = (out / "study.md").read_text()
    older = json.loads((out / "study.json").read_text())
    del older["significance"]["two_level_test"], older["significance"]["comparisons"]["sage"]["subsets"]["test"][
        "two_level"
    ]  # fmt: skip
    (out / "study.json").write_text(json.dumps(older, indent=1))
    (out / "study.md").write_text(report(load_spec(spec_file), older["results"], older["significance"]))
    assert "two-level" not in (out / "study.md").read_text()
    assert study.main([str(spec_file), "--out", str(out), "--retest"]) == summary
    assert (out / "study.md").read_text() == table and json.loads((out / "study.json").read_text()) == summary
    # a study.json whose tests the record's hypotheses do not give is refused, and nothing is written
    older["significance"]["comparisons"]["sage"]["subsets"]["test"]["pooled"]["BLEU"]["p_value"] = 0.5
    (out / "study.json").write_text(json.dumps(older, indent=1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        study.main([str(spec_file), "--out", str(out), "--retest"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "significance.comparisons.sage.subsets.test.pooled.BLEU.p_value is 0.5" in err
    assert json.loads((out / "study.json").read_text()) == older and (out / "study.md").read_text() == table


COMMITTED = ROOT / "results" / "multi30k_de_en"


def regenerated_study_md(folder: Path) -> tuple[dict, str]:
    """The study.json committed in ``folder`` and report() of it, asserted equal to the study.md beside it."""
    summary = json.loads((folder / "study.json").read_text())
    spec = parse_spec(summary["spec"], Path(summary["spec_file"]))
    text = report(spec, summary["results"], summary.get("significance"), summary.get("base"), summary.get("compute"))
    assert text == (folder / "study.md").read_text()
    return summary, text


def test_the_committed_study_md_regenerates_byte_for_byte_from_study_json():
    """results/multi30k_de_en/study.md is report() of the study.json written beside it (the committed runs)."""
    summary, text = regenerated_study_md(COMMITTED)
    # a length penalty chosen at an end of the sweep is named (adam 1.4 of 0.6-1.4), one inside it is not (sage 1.2)
    edge = [line for line in text.splitlines() if line.startswith("Chosen at an edge of the sweep")]
    assert edge == [
        "Chosen at an edge of the sweep (a better length penalty may lie beyond it): adam 1.4 (the highest)."
    ]
    assert lenpen_edges([0.6, 1.0, 1.4], {"a": 0.6, "b": 1.0, "c": 1.4}) == [
        "a 0.6 (the lowest)",
        "c 1.4 (the highest)",
    ]
    assert lenpen_edges([1.0], {"a": 1.0}) == []  # a sweep of one value has no edge to extend
    # the spec file gives the spec that study.json records (keys, values and their order)
    loaded = load_spec(ROOT / summary["spec_file"]).as_read
    assert list(loaded.items()) == list(summary["spec"].items())


def two_level_is_the_seeds_mean(summary: dict) -> None:
    """Every two-level test in study.json scores each optimizer by the mean of its seeds' test sacreBLEU and chrF
    (the test table's means): it was computed on the hypotheses the study scored."""
    significance = summary["significance"]
    assert significance["two_level_test"].startswith("two-level paired bootstrap (1000 resamples, seed 12345)")
    for system, comparison in significance["comparisons"].items():
        for subset, tested in comparison["subsets"].items():
            for name in (significance["baseline"], system):
                result = summary["results"][name]
                cells = [s["test"][subset][f"{result['lenpen']:g}"] for s in result["seeds"]]
                for metric, key in (("BLEU", "sacrebleu"), ("chrF", "chrf")):
                    mean = sum(c[key] for c in cells) / len(cells)
                    assert tested["two_level"][metric][name] == pytest.approx(mean, abs=1e-6), (system, subset)


def test_the_committed_converged_study_md_regenerates_from_study_json():
    """results/multi30k_de_en_converged_final/study_final/study.md (the converged study's test step) is report() of
    the study.json beside it, paired bootstrap included, and names the length penalty both chose at the sweep's top;
    the two-level test over the 5 seed pairs is there beside the pooled one, and as significant (p <= 0.002)."""
    summary, text = regenerated_study_md(ROOT / "results" / "multi30k_de_en_converged_final" / "study_final")
    assert "adam 1.6 (the highest); sage 1.6 (the highest)." in text
    assert [r["seed"] for r in summary["results"]["sage"]["seeds"]] == [1, 2, 3, 4, 5]
    two_level_is_the_seeds_mean(summary)
    assert "| test2016 | two-level 1,2,3,4,5 | 40.56 | 39.83 | -0.73 | 0.002 |" in text
    assert "| test2017 | two-level 1,2,3,4,5 | 36.86 | 35.40 | -1.46 | 0.001 |" in text


def test_the_committed_ablation_study_md_regenerates_from_study_json():
    """results/multi30k_de_en_converged_final/study_ablations/study.md (the ablations' test step) is report() of the
    study.json beside it: every variant compared with SAGE on all tensors, its baseline, 2 seeds each."""
    summary, text = regenerated_study_md(ROOT / "results" / "multi30k_de_en_converged_final" / "study_ablations")
    assert list(summary["results"])[0] == "sage" and len(summary["results"]) == 6
    assert all([r["seed"] for r in v["seeds"]] == [1, 2] for v in summary["results"].values())
    assert sorted(summary["significance"]["comparisons"]) == sorted(list(summary["results"])[1:])
    assert "## Paired bootstrap (sage_no_embed against sage" in text
    two_level_is_the_seeds_mean(summary)
    assert text.count("| two-level 1,2 |") == 10


def test_the_committed_study_plots_render_from_study_json(tmp_path):
    summary = json.loads((COMMITTED / "study.json").read_text())
    plots(tmp_path, parse_spec(summary["spec"], Path(summary["spec_file"])), summary["results"])
    for png in ("learning_curves.png", "grid_curves.png", "lenpen.png"):
        assert (tmp_path / png).stat().st_size > 10_000


def test_a_seed_that_diverged_shows_as_nan_in_the_test_table():
    """A NaN final validation loss is shown as nan, not left out of the mean over seeds."""
    summary = json.loads((COMMITTED / "study.json").read_text())
    results = json.loads(json.dumps(summary["results"]))
    results["adam"]["seeds"][0]["final_valid_loss"] = float("nan")
    text = report(parse_spec(summary["spec"], Path(summary["spec_file"])), results)
    assert "| adam | 1.4 | nan |" in text and "| adam | 1 | nan |" in text and "| sage − adam | | nan |" in text


def test_more_than_two_optimizers_are_each_compared_with_the_first():
    """An ablation study (several SAGE variants): a difference row and a paired bootstrap table per optimizer
    against the first, the baseline."""
    summary = json.loads((COMMITTED / "study.json").read_text())
    results = json.loads(json.dumps(summary["results"]))
    results["sage_variant"] = json.loads(json.dumps(results["sage"]))
    scores = {"adam": 30.0, "sage": 31.0, "difference": 1.0, "p_value": 0.2, "signature": "nrefs:1|bs:1000"}
    tested = {"pairs": [{"seed": 1, "BLEU": scores, "chrF": scores}], "pooled": {"BLEU": scores, "chrF": scores}}
    variant = {k.replace("sage", "sage_variant"): v for k, v in scores.items()}
    variant_tested = {"pairs": [], "pooled": {"BLEU": variant, "chrF": variant}}
    significance = {
        "baseline": "adam", "model": "last",
        "comparisons": {
            "sage": {"seeds": [1], "subsets": {"test": tested}},
            "sage_variant": {"seeds": [1], "subsets": {"test": variant_tested}},
        },
    }  # fmt: skip
    text = report(parse_spec(summary["spec"], Path(summary["spec_file"])), results, significance)
    assert text.count("| sage − adam | |") == 2 and text.count("| sage_variant − adam | |") == 2
    assert "Rows X − adam: difference of the means" in text
    assert "## Paired bootstrap (sage against adam, last checkpoint" in text
    assert "## Paired bootstrap (sage_variant against adam" in text
    assert "| test2016 | 1 | 30.00 | 31.00 | +1.00 | 0.200 |" in text and "| test2016 | pooled 1 |" in text


def test_hypotheses_missing_from_a_run_without_a_record_are_named(tmp_path):
    """The paired tests read each run's hypotheses: a run folder without them (and no record) is a ToolkitError that
    names the file, not a bare FileNotFoundError."""
    for name in ("dict.de.txt", "test.de-en.de.idx", "test.de-en.en.idx"):
        (tmp_path / name).write_text("")
    study_ = Study(load_spec(write_spec(tmp_path / "spec.yaml", tmp_path)), tmp_path / "out", jobs=1, cpu=True)
    with pytest.raises(ToolkitError, match=r"run adam/lr1/seed1: no hypotheses .*eval\.test\.lp1\.hyp\.en \(and no"):
        study_.hypotheses(study_.run("adam", "lr1", 1), "test", 1.0, "last")


def test_a_record_of_a_run_trained_otherwise_is_refused_not_reused(tmp_path):
    """A record shared by two specs, or a spec edited after its runs were recorded (a raised budget): the run is read
    from the record only if it was trained as asked; the statistics options aside, which change no update."""
    (tmp_path / "dict.de.txt").write_text("")
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tmp_path, record=str(tmp_path / "record")))
    study_ = Study(spec, tmp_path / "out", jobs=1, cpu=True)
    run = study_.run("adam", "lr1", 1)
    recorded = tmp_path / "record" / "adam" / "lr1" / "seed1"
    recorded.mkdir(parents=True)

    def record(**fields):
        run_json = {"run": run.name, "config": "demo_adam", "spec_overrides": TINY,
                    "overrides": ["optimization.lr=[0.001]"], **fields}  # fmt: skip
        (recorded / "run.json").write_text(json.dumps({k: v for k, v in run_json.items() if v is not None}))

    record()
    assert study_.recorded(run) is not None
    record(overrides=["optimization.lr=[0.001]", "lr_scheduler.sage_stats_by_kind=true"])
    assert study_.recorded(run) is not None
    record(config=None, spec_overrides=None)  # an early record: the setting's overrides alone are known
    assert study_.recorded(run) is not None
    for changed, message in [
        ({"spec_overrides": [*TINY[1:], "optimization.max_update=8"]}, "recorded with spec_overrides"),
        ({"config": "demo_sage"}, "recorded with config 'demo_sage', but the study asks for 'demo_adam'"),
        ({"overrides": ["optimization.lr=[0.002]"], "config": None}, "recorded with overrides"),
    ]:
        record(**changed)
        with pytest.raises(ToolkitError, match=message) as err:
            study_.recorded(run)
        assert f"delete {recorded} to train the run again" in str(err.value)


def test_next_names_the_runs_the_record_lacks_in_training_order(tmp_path, capsys):
    """--next N, the same command at every sitting of a long study: the tune seed's settings first, then seed by seed
    each optimizer with a single setting (a grid's other seeds wait for its winner); a failed run is done too; with
    everything recorded it says so and trains nothing; refused with N < 1, beside --only, or without a record."""
    (tmp_path / "dict.de.txt").write_text("")
    record = tmp_path / "record"
    grids = write_spec(tmp_path / "grids.yaml", tmp_path, record=str(record))  # two settings each: seeds 2+ wait
    assert Study(load_spec(grids), tmp_path / "out", jobs=1, cpu=True).unrecorded(10) == [
        "adam/lr1/seed1", "adam/lr2/seed1", "sage/ok/seed1", "sage/bad/seed1"
    ]  # fmt: skip
    optimizers = {
        "adam": {"config": "demo_adam", "grid": {"lr1": ["optimization.lr=[0.001]"]}},
        "sage": {"config": "demo_sage", "grid": {"ok": ["optimizer.sage_beta3=0.8"]}},
    }
    spec_file = write_spec(tmp_path / "spec.yaml", tmp_path, seeds=[1, 2, 3], record=str(record), optimizers=optimizers)
    study_ = Study(load_spec(spec_file), tmp_path / "out", jobs=1, cpu=True)
    order = [f"{run}/seed{seed}" for seed in (1, 2, 3) for run in ("adam/lr1", "sage/ok")]
    assert study_.unrecorded(10) == order and study_.unrecorded(2) == order[:2]

    def done(name, file="run.json"):
        (record / name).mkdir(parents=True, exist_ok=True)
        (record / name / file).write_text(json.dumps({"run": name}))

    done("adam/lr1/seed1")
    done("sage/ok/seed1", "failed.json")
    (record / "adam/lr1/seed2").mkdir(parents=True)  # begun, not recorded: still to do
    assert study_.unrecorded(2) == ["adam/lr1/seed2", "sage/ok/seed2"]
    for name in order[2:]:
        done(name)
    assert study_.unrecorded(2) == []
    out = tmp_path / "out"
    assert study.main([str(spec_file), "--out", str(out), "--next", "2"]) == {}
    assert "every run --next can name is recorded" in capsys.readouterr().out and not out.exists()

    no_record = write_spec(tmp_path / "no_record.yaml", tmp_path, optimizers=optimizers)
    for argv, message in [
        ([spec_file, "--next", "0"], "--next must be >= 1, got 0"),
        ([spec_file, "--next", "1", "--only", "adam/lr1"], "not allowed with argument"),
        ([no_record, "--next", "1"], "--next: the spec has no 'record'"),
    ]:
        with pytest.raises(SystemExit) as err:
            study.main([str(a) for a in argv] + ["--out", str(out)])
        assert err.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists(), "a refused --next starts nothing"


def test_the_sage_multiplier_table_averages_the_end_of_training_over_seeds(tmp_path):
    """study.md's multiplier table: each run's statistics over the last 10 % of its updates, then mean ± std over
    seeds, per layer type; sage_multipliers.png beside it; neither for runs that did not log them (Adam, old ones)."""
    summary = json.loads((COMMITTED / "study.json").read_text())
    spec, results = parse_spec(summary["spec"], Path(summary["spec_file"])), json.loads(json.dumps(summary["results"]))
    assert "SAGE multiplier" not in report(spec, results)
    assert not plot_multipliers(tmp_path / "none.png", results) and not (tmp_path / "none.png").exists()

    def stats(end_value):  # updates 100..1000; the last 10 % are 900 and 1000
        update = list(range(100, 1001, 100))
        column = [0.9] * 8 + [end_value, end_value + 0.2]
        keys = ("mult_mean", "r_q10", "r_q50", "r_q90", "r_gt1")
        return {"update": update, "alpha": [1.0] * 10, **{k: column for k in keys},
                **{f"attn_{k}": [0.1] * 10 for k in keys}}  # fmt: skip

    results["sage"]["seeds"][0]["sage_stats"] = stats(0.4)  # end: 0.5
    results["sage"]["seeds"][1]["sage_stats"] = stats(0.6)  # end: 0.7
    text = report(spec, results)
    assert "## SAGE multiplier by layer type, end of training" in text
    assert "| sage | all | 2 | 0.600 ± 0.141 | 0.600 ± 0.141 |" in text  # mean(0.5, 0.7), std sqrt(0.02)
    assert "| sage | attn | 2 | 0.100 ± 0.000 |" in text and "| adam |" not in text.split("SAGE multiplier")[1]
    assert plot_multipliers(tmp_path / "sage_multipliers.png", results)
    assert (tmp_path / "sage_multipliers.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_failing_grid_is_reported_and_the_study_ends_with_a_message(demo_bin, tmp_path, capsys):
    spec = {"data": str(demo_bin), "jobs": 2, "beam": 1, "seeds": [1], "valid_bleu": False,
            "overrides": ["optimization.max_update=2", "optimizer.sage_beta3=1.5"],  # every run fails at start-up
            "optimizers": {"sage": {"config": "demo_sage", "grid": {"a": ["optimization.lr=[0.001]"]}}}}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(json.dumps(spec))
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exit_:  # the old study ended with a traceback of its StudyError
        study.main([str(tmp_path / "spec.yaml"), "--out", str(out)])
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    err = captured.err
    own = [line for line in err.splitlines() if not line.lstrip().startswith("|")]  # "|": the child log's end
    assert not any("Traceback" in line for line in own), err
    # the grid failure as it happens: its run, its log and the end of its error
    log = out / "sage" / "a" / "seed1" / "train.out"
    assert f"sage-study: [sage/a/seed1] training failed (exit status 1); log: {log}" in err
    assert "its end:" in err and "sage_beta3" in log.read_text() and "[sage/a/seed1] FAILED" in captured.out
    # then the end of the study, one line
    assert (
        err.strip().splitlines()[-1]
        == f"sage-study: error: [sage] every grid setting failed; see {out / 'sage'}/*/train.out"
    )
    assert not (out / "study.json").exists()


def test_the_committed_finetuning_pilot_study_md_regenerates_from_study_json():
    """results/finetune_de_en_pilot/study.md (issue 35's pilot) is report() of the study.json beside it, with the
    committed base model's hash and its scores before fine-tuning, and the base's domain as the forgetting test."""
    summary, text = regenerated_study_md(ROOT / "results" / "finetune_de_en_pilot")
    base = ROOT / "results" / "finetune_de_en" / "base" / "checkpoint_base.pt"
    assert summary["base"]["sha256"] == sha256_of(base)
    assert f"sha256 `{summary['base']['sha256']}`" in text
    assert "| tatoeba sacreBLEU | tatoeba chrF | tatoeba BP |" in text
