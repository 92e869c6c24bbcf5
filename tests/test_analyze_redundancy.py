"""scripts/analyze_redundancy.py (sage_toolkit.redundancy) on a tiny trained model: pruning, the loss it measures,
outputs and errors; and the committed Multi30k analysis rebuilt from its redundancy.json.

One model is trained (module fixture, plain Adam, 30 updates on the generated tiny corpus) and analysed once through
the command line under two names (the two records must then be identical), plus in-process checks of the ranking and
pruning functions against the model's own tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys

import pytest
import torch

from sage_toolkit.redundancy import command as analyze_cli
from sage_toolkit.redundancy import model as redundancy_model
from sage_toolkit.redundancy import pruning, scoring, sensitivity, summary
from sage_toolkit.redundancy.options import RedundancyOptions
from sage_toolkit.stats import format_difference
from tests.fairseq_utils import ROOT, cpu_env, data_bin_variant, run_cli, threads, train_args

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "analyze_redundancy.py"

SPARSITIES = [0.0, 0.3, 0.6]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


ENV = cpu_env()


def popen(*argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV, cwd=ROOT)  # fmt: skip


@pytest.fixture(scope="module")
def analysed(tiny_data_bin, tmp_path_factory):
    """One CLI run of the analysis on a tiny trained model, given twice; beside it (in parallel) fairseq-validate
    and scripts/evaluate.py --beam 1 on the same checkpoint, as independent references."""
    root = tmp_path_factory.mktemp("redundancy")
    save = root / "ckpt"
    optimizer = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"]
    run_cli("train", train_args(tiny_data_bin, save, optimizer, max_update=30, extra=["--lr", "1e-2"]))
    ckpt = save / "checkpoint_last.pt"
    digest, mtime = sha256(ckpt), ckpt.stat().st_mtime_ns
    plugin = ROOT / "fairseq_plugins"
    validate = popen("-m", "fairseq_cli.validate", tiny_data_bin, "--path", ckpt, "--user-dir", plugin, "--task",
                     "translation", "--max-tokens", "4096", "--cpu")  # fmt: skip
    evaluate = popen(ROOT / "scripts" / "evaluate.py", "--data-bin", tiny_data_bin, "--checkpoint", ckpt, "--subset",
                     "valid", "--beam", "1", "--max-tokens", "4096", "--cpu", "--out", root / "eval.json")  # fmt: skip
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-bin", str(tiny_data_bin), "--checkpoints", f"first={ckpt}",
         f"second={save}", "--out", str(out), "--sparsities", *map(str, SPARSITIES), "--batches", "2",
         "--max-len-a", "1", "--max-len-b", "4", "--cpu", "--by-layer-type"],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600,
    )  # fmt: skip
    validate_out = validate.communicate(timeout=600)[0]
    evaluate_out = evaluate.communicate(timeout=600)[0]
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert validate.returncode == 0, validate_out[-3000:]
    assert evaluate.returncode == 0, evaluate_out[-3000:]
    assert sha256(ckpt) == digest and ckpt.stat().st_mtime_ns == mtime  # the checkpoint is only read
    return {
        "ckpt": ckpt, "out": out, "result": json.loads((out / "redundancy.json").read_text()), "stdout": proc.stdout,
        "validate": validate_out, "evaluate": json.loads((root / "eval.json").read_text()),
    }  # fmt: skip


def test_curves_json_plots_and_table(analysed, tiny_data_bin):
    ckpt, out, result, stdout = (analysed[k] for k in ("ckpt", "out", "result", "stdout"))
    assert (out / "pruning_curves.png").stat().st_size > 10_000
    assert (out / "sensitivity_by_layer_type.png").stat().st_size > 10_000
    assert result["sparsities"] == SPARSITIES and result["methods"] == ["sensitivity", "magnitude"]
    assert "dim >= 2" in result["scope"] and "globally" in result["scope"]
    first, second = result["models"]["first"], result["models"]["second"]
    assert first["checkpoint"] == second["checkpoint"] == str(ckpt.resolve())  # a save dir -> checkpoint_last.pt
    # the same checkpoint twice: the analysis is deterministic
    assert first["results"] == second["results"] and first["unpruned"] == second["unpruned"]

    # scope: 2-D tensors only, the tied decoder embedding / output projection counted once, every layer type present
    names = [t["name"] for t in first["tensors"]]
    assert all(len(t["shape"]) == 2 for t in first["tensors"]) and len(set(names)) == len(names)
    assert not any("layer_norm" in n or n.endswith(".bias") for n in names)
    assert not any("output_projection" in n for n in names)  # --share-decoder-input-output-embed
    assert first["entries_in_scope"] == sum(t["shape"][0] * t["shape"][1] for t in first["tensors"])
    assert set(first["log10_sensitivity_by_layer_type"]) == {"embeddings", "attention", "feed-forward"}
    # fairseq's BetterTransformer copies of the encoder layer weights take no part in the forward pass: left out
    assert set(first["excluded_unused_tensors"]) == {
        f"encoder.layers.0.{w}_weight" for w in ("in_proj", "out_proj", "fc1", "fc2")
    }
    assert not set(first["excluded_unused_tensors"]) & set(names)

    # the loss at sparsity 0 is the unpruned model's loss, and both equal fairseq-validate's valid loss
    m = re.search(r"valid on 'valid' subset \| loss ([0-9.]+) \| nll_loss ([0-9.]+)", analysed["validate"])
    assert m, analysed["validate"][-3000:]
    assert first["unpruned"]["loss"] == pytest.approx(float(m.group(1)), abs=6e-4)
    assert first["unpruned"]["nll_loss"] == pytest.approx(float(m.group(2)), abs=6e-4)
    total = first["entries_in_scope"]
    for method, rows in first["results"].items():
        assert [r["sparsity"] for r in rows] == SPARSITIES
        zero, _, most = rows
        assert zero["loss"] == first["unpruned"]["loss"] and zero["bleu"] == first["unpruned"]["bleu"]
        assert zero["n_pruned"] == 0
        for r in rows[1:]:
            assert r["n_pruned"] == round(r["sparsity"] * total)
            assert abs(r["zero_fraction"] - r["sparsity"]) <= 0.5 / total + 1e-12, method
        # pruning 60 % changes the model; for this barely trained tiny model only magnitude pruning reliably hurts
        # (train-batch sensitivity can even lower its validation loss slightly)
        assert most["loss"] != zero["loss"], method
        if method == "magnitude":
            assert most["loss"] > zero["loss"]
        assert most["loss_increase"] == pytest.approx(most["loss"] - zero["loss"])
        assert all(0 <= r["bleu"] <= 100 for r in rows)
    # the two rankings prune different entries
    overlap = first["pruned_set_overlap_sensitivity_vs_magnitude"]
    assert set(overlap) == {"0.3", "0.6"} and all(0 < v < 1 for v in overlap.values())
    # the printed table: one line per model, method and sparsity
    assert len([line for line in stdout.splitlines() if line.startswith(("first ", "second "))]) == 2 * 2 * 3


def test_pruning_within_each_layer_type(analysed):
    """--by-layer-type: each layer type pruned alone, to each sparsity of its own entries, beside the global sweep."""
    out, result = analysed["out"], analysed["result"]
    assert (out / "pruning_curves_by_layer_type.png").stat().st_size > 10_000
    first = result["models"]["first"]
    by_type = first["results_by_layer_type"]
    assert set(by_type) == {"embeddings", "attention", "feed-forward"}
    entries = {kind: 0 for kind in by_type}
    for t in first["tensors"]:
        entries[t["layer_type"]] += t["shape"][0] * t["shape"][1]
    assert sum(entries.values()) == first["entries_in_scope"]
    for kind, methods in by_type.items():
        assert set(methods) == {"sensitivity", "magnitude"}
        for method, rows in methods.items():
            zero, *pruned = rows
            assert zero["loss"] == first["unpruned"]["loss"] and zero["n_pruned"] == 0
            for r in pruned:
                assert r["n_pruned"] == round(r["sparsity"] * entries[kind])  # of the type's entries, not the scope's
                assert abs(r["zero_fraction"] - r["sparsity"]) <= 0.5 / entries[kind] + 1e-12, (kind, method)
                assert r["loss_increase"] == pytest.approx(r["loss"] - zero["loss"])
            # magnitude pruning 60 % of a type changes the model's loss
            assert method != "magnitude" or rows[-1]["loss"] != zero["loss"], kind
    assert first["results_by_layer_type"] == result["models"]["second"]["results_by_layer_type"]
    # the global sweep says how much of each type its single ranking zeroed: shares that add up, weighted by the
    # types' sizes, to the global fraction; magnitude ranks across types of different scales, so the shares differ
    for method, rows in first["results"].items():
        for r in rows:
            shares = r["zero_fraction_by_layer_type"]
            assert set(shares) == set(entries) and all(0 <= v <= 1 for v in shares.values())
            weighted = sum(shares[kind] * entries[kind] for kind in entries) / first["entries_in_scope"]
            assert weighted == pytest.approx(r["zero_fraction"], abs=1e-9), (method, r["sparsity"])
    shares = first["results"]["magnitude"][-1]["zero_fraction_by_layer_type"]
    assert max(shares.values()) - min(shares.values()) > 0.01, shares
    assert all("zero_fraction_by_layer_type" not in r for m in by_type.values() for rows in m.values() for r in rows)
    assert set(result["groups_by_layer_type"]) == set(by_type)
    assert analysed["stdout"].count("pruning_curves_by_layer_type.png") == 1


def test_pruning_zeroes_the_lowest_ranked_entries_and_restores(analysed, tiny_data_bin, monkeypatch):
    ckpt = analysed["ckpt"]
    model, task, _, criterion = redundancy_model.load(ckpt, tiny_data_bin, use_cuda=False)
    params = [p for _, p in pruning.pruned_parameters(model)]
    sens, used = sensitivity.sensitivities(
        model, criterion, task, params, subset="train", batches_wanted=2, max_tokens=4096, seed=1, use_cuda=False
    )
    params = [p for p, u in zip(params, used, strict=True) if u]
    sens = [s for s, u in zip(sens, used, strict=True) if u]
    original = [p.detach().clone() for p in params]
    total = sum(p.numel() for p in params)
    assert all(p.grad is None for p in model.parameters())  # gradients are not left behind
    flat_sens = torch.cat([s.reshape(-1) for s in sens])
    flat_mag = torch.cat([p.detach().abs().reshape(-1) for p in params])
    masks = {}
    for method, scores, flat in (("sensitivity", sens, flat_sens), ("magnitude", [p.abs() for p in params], flat_mag)):
        order = pruning.ranking(scores)
        k = pruning.num_pruned(0.4, total)
        pruning.prune_(params, order, k)
        zeroed = torch.cat([(p == 0).reshape(-1) for p in params])
        assert int(zeroed.sum()) == k
        # every zeroed entry scores no higher than every kept one
        assert flat[zeroed].max() <= flat[~zeroed].min()
        masks[method] = zeroed
        with torch.no_grad():
            for p, o in zip(params, original, strict=True):
                p.copy_(o)
    assert not torch.equal(masks["sensitivity"], masks["magnitude"])
    assert all(torch.equal(p, o) for p, o in zip(params, original, strict=True))

    # BLEU of the unpruned model, in-process, at fairseq's default maximum length: scripts/evaluate.py's sacreBLEU
    bleu_options = RedundancyOptions(data_bin=tiny_data_bin, checkpoints=(), out=ckpt.parent, subset="valid", beam=1,
                                     max_len_a=0.0, max_len_b=200, max_tokens=4096, seed=1)  # fmt: skip
    # with the thread count of scripts/evaluate.py's process (ENV): greedy search picks between near-equal scores,
    # and matrix products split over another number of threads may round them otherwise
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads()))
    try:
        bleu = scoring.BleuScorer(task, bleu_options)(model, task, use_cuda=False)
    finally:
        torch.set_num_threads(before)
    reference = analysed["evaluate"]
    assert bleu["bleu_sentences"] == reference["n_sentences"] == 40
    assert bleu["bleu"] == pytest.approx(reference["sacrebleu"], abs=1e-9)
    assert bleu["bleu_signature"] == reference["sacrebleu_signature"]
    # with --remove-bpe, scoring leaves the target dictionary alone (fairseq's post_process_prediction re-encodes the
    # text with add_if_not_exist: new words grew the dictionary and the next generation failed): the same BLEU twice
    scorer = scoring.BleuScorer(task, dataclasses.replace(bleu_options, max_len_b=4))
    scorer.setup.remove_bpe = "subword_nmt"

    def no_new_symbols(*_, **__):
        raise AssertionError("the target dictionary was written to")

    monkeypatch.setattr(task.target_dictionary, "add_symbol", no_new_symbols)
    first = scorer(model, task, use_cuda=False)
    assert scorer(model, task, use_cuda=False) == first
    # ties are broken by position: a constant score prunes the first k entries in order
    order = pruning.ranking([torch.zeros(3, 2), torch.zeros(4)])
    assert order.tolist() == list(range(10))
    # layer types
    assert pruning.layer_type("encoder.layers.0.self_attn.k_proj.weight") == "attention"
    assert pruning.layer_type("decoder.layers.0.encoder_attn.out_proj.weight") == "attention"
    assert pruning.layer_type("decoder.layers.0.fc2.weight") == "feed-forward"
    assert pruning.layer_type("decoder.embed_tokens.weight") == "embeddings"
    assert pruning.layer_type("decoder.output_projection.weight") == "embeddings"


def test_errors(analysed, tiny_data_bin, tmp_path, capsys):
    ckpt = analysed["ckpt"]

    def fails(*argv) -> str:
        try:
            code = analyze_cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors
            code = e.code
        assert code not in (0, None)
        return capsys.readouterr().err

    base = ["--out", tmp_path / "o", "--no-bleu", "--cpu"]
    assert "does not exist" in fails("--data-bin", tiny_data_bin, "--checkpoints", f"a={tmp_path}/none.pt", *base)
    assert "neither checkpoint_best.pt" in fails("--data-bin", tiny_data_bin, "--checkpoints", f"a={tmp_path}", *base)
    assert "NAME=PATH" in fails("--data-bin", tiny_data_bin, "--checkpoints", str(ckpt), *base)
    assert "twice" in fails("--data-bin", tiny_data_bin, "--checkpoints", f"a={ckpt}", f"a={ckpt}", *base)
    assert "not a folder" in fails("--data-bin", tmp_path / "missing", "--checkpoints", f"a={ckpt}", *base)
    assert "not a fairseq data-bin" in fails("--data-bin", tmp_path, "--checkpoints", f"a={ckpt}", *base)
    assert "no binarised 'dev' split" in fails("--data-bin", tiny_data_bin, "--checkpoints", f"a={ckpt}",
                                               "--subset", "dev", *base)  # fmt: skip
    for bad in ("1", "1.5", "-0.1"):
        err = fails("--data-bin", tiny_data_bin, "--checkpoints", f"a={ckpt}", "--sparsities", "0", bad, *base)
        assert "[0, 1)" in err
    assert "--batches must be positive" in fails("--data-bin", tiny_data_bin, "--checkpoints", f"a={ckpt}",
                                                 "--batches", "0", *base)  # fmt: skip
    # what fairseq would stop on with "cannot mmap an empty file" or a size-mismatch traceback
    empty = data_bin_variant(tiny_data_bin, tmp_path / "empty", empty_split="valid")
    err = fails("--data-bin", empty, "--checkpoints", f"a={ckpt}", *base)
    assert (
        f"{empty / 'valid.src-tgt.src.bin'} is empty: the 'valid' split of {empty} (--subset) has no sentences" in err
    )
    other = data_bin_variant(tiny_data_bin, tmp_path / "other", extra_entries=8)
    err = fails("--data-bin", other, "--checkpoints", f"a={ckpt}", *base)
    n = len((tiny_data_bin / "dict.src.txt").read_text().splitlines()) + 4  # and fairseq's 4 special symbols
    assert (
        f"{ckpt} was trained with a dictionary of {n} entries for its encoder, but {other / 'dict.src.txt'} has {n + 8}"
        in err
    )
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_group_summary_is_the_mean_and_spread_over_a_groups_models():
    import statistics

    def record(increase, bleu):
        rows = [{"sparsity": 0.0, "loss": 5.0, "loss_increase": 0.0, "bleu": 30.0, "bleu_drop": 0.0,
                 "zero_fraction": 0.0},
                {"sparsity": 0.5, "loss": 5.0 + increase, "loss_increase": increase, "bleu": bleu,
                 "bleu_drop": 30.0 - bleu, "zero_fraction": 0.5}]  # fmt: skip
        return {"results": {"sensitivity": rows}}

    models = {"adam/seed1": record(0.2, 25.0), "adam/seed2": record(0.4, 21.0), "sage": record(1.0, 10.0)}
    groups = summary.group_summary(models)
    assert list(groups) == ["adam"]  # a model alone is no group
    assert groups["adam"]["models"] == ["adam/seed1", "adam/seed2"]
    row = groups["adam"]["sensitivity"][1]
    assert row["sparsity"] == 0.5
    assert row["loss_increase"]["mean"] == pytest.approx(0.3)
    assert row["loss_increase"]["std"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    assert row["bleu_drop"] == {"mean": pytest.approx(7.0), "std": pytest.approx(statistics.stdev([5.0, 9.0]))}
    assert "adam: mean ± std over 2 models (adam/seed1, adam/seed2)" in summary.table(models)


def test_table_adds_the_groups_within_each_layer_type():
    """With ``results_by_layer_type`` the table prints each layer type's group summary after the global one, the
    numbers of ``summaries``' ``groups_by_layer_type``; without it, nothing more than the global groups."""
    from sage_toolkit.redundancy.analysis import summaries

    def rows(increase):
        return {"sensitivity": [
            {"sparsity": 0.0, "loss": 4.0, "loss_increase": 0.0, "bleu": 30.0, "bleu_drop": 0.0, "zero_fraction": 0.0},
            {"sparsity": 0.6, "loss": 4.0 + increase, "loss_increase": increase, "bleu": 29.0, "bleu_drop": 1.0,
             "zero_fraction": 0.6},
        ]}  # fmt: skip

    def model(total, ffn, embed):
        return {"results": rows(total), "results_by_layer_type": {"feed-forward": rows(ffn), "embeddings": rows(embed)}}

    models = {"adam/s1": model(0.3, 0.01, 0.1), "adam/s2": model(0.5, 0.03, 0.2), "sage/s1": model(0.6, 0.0, 0.25),
              "sage/s2": model(0.4, 0.02, 0.35)}  # fmt: skip
    text = summary.table(models)
    by_type = summaries(models)["groups_by_layer_type"]
    assert list(by_type) == ["feed-forward", "embeddings"]
    for kind, groups in by_type.items():
        for group, rec in groups.items():
            head = f"{kind} pruned alone, {group}: mean ± std over 2 models ({', '.join(rec['models'])})"
            block = text.split(head, 1)[1].splitlines()[2]  # the 0.6 row under the block's header
            increase = rec["sensitivity"][1]["loss_increase"]
            assert (
                block == f"  sensitivity  0.60: loss_increase {increase['mean']:.4f} ± {increase['std']:.4f}, "
                "bleu_drop 1.0000 ± 0.0000"
            )
    assert "embeddings pruned alone, sage: mean ± std over 2 models (sage/s1, sage/s2)\n  sensitivity  0.00" in text
    assert text.endswith("sensitivity  0.60: loss_increase 0.3000 ± 0.0707, bleu_drop 1.0000 ± 0.0000")  # 0.25, 0.35
    plain = {name: {"results": rec["results"]} for name, rec in models.items()}
    assert "pruned alone" not in summary.table(plain)


COMMITTED = ROOT / "results" / "multi30k_de_en" / "redundancy" / "redundancy.json"


def test_the_committed_analysis_is_rebuilt_from_its_json():
    """results/multi30k_de_en/redundancy: the group summary, the printed table and RESULTS.md's table come from
    redundancy.json with today's code: ``groups`` equal, the table's text that of the code that made the JSON (its
    SHA-256, recorded before the move into sage_toolkit), every row of RESULTS.md's table formatted from the groups."""
    result = json.loads(COMMITTED.read_text())
    models, groups = result["models"], result["groups"]
    assert summary.group_summary(models) == groups
    text = summary.table(models)
    digest = "7f46347a17f46373d094c4cf0808a99eb0ee9734c2101de383d6066b561d1f54"
    assert hashlib.sha256(text.encode()).hexdigest() == digest
    assert "sage: mean ± std over 3 models (sage/seed1, sage/seed2, sage/seed3)" in text

    def cell(value: dict, digits: int) -> str:
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"

    rows = [line for line in (ROOT / "RESULTS.md").read_text().splitlines()
            if re.match(r"\| (sensitivity|magnitude) \| \d+% \|", line)]  # fmt: skip
    assert len(rows) == 10
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        method, percent = cells[0], int(cells[1].rstrip("%"))
        i = [round(100 * row["sparsity"]) for row in groups["adam"][method]].index(percent)
        adam, sage = groups["adam"][method][i], groups["sage"][method][i]
        increases = {
            group: [models[name]["results"][method][i]["loss_increase"] for name in groups[group]["models"]]
            for group in ("adam", "sage")
        }

        assert cells == [
            method, f"{percent}%", cell(adam["loss_increase"], 3), cell(sage["loss_increase"], 3),
            format_difference(increases["adam"], increases["sage"], 3), cell(adam["bleu_drop"], 2),
            cell(sage["bleu_drop"], 2),
        ]  # fmt: skip
