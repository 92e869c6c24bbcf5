"""scripts/analyze_token_loss.py (sage_toolkit.token_loss): the per-token NLL by training-frequency band, against
references that share none of its code, and every bad input.

One tiny model is trained (module fixture, plain Adam, 30 updates on the generated corpus) and measured through the
command line under two names. The references: the token counts from the raw text of the corpus (Python's Counter, not
the data-bin), the per-token log-probabilities that ``fairseq-generate --score-reference`` prints for the reference
translations (P- lines), and ``fairseq-validate``'s nll_loss.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter

import pytest

from sage_toolkit.errors import ToolkitError
from sage_toolkit.token_loss import analysis
from sage_toolkit.token_loss.analysis import TokenLossOptions, band_labels, bands, check_edges, shares, table
from tests.fairseq_utils import PLUGIN_DIR, ROOT, cpu_env, data_bin_variant, run_cli, train_args

SCRIPT = ROOT / "scripts" / "analyze_token_loss.py"
ENV = cpu_env()


def cli(*argv, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, argv)], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)  # fmt: skip


def raw_lines(tiny_data_bin, split: str, side: str) -> list[list[str]]:
    return [line.split() for line in (tiny_data_bin.parent / "raw" / f"{split}.{side}").read_text().splitlines()]


def raw_counts(tiny_data_bin, side: str) -> Counter:
    """Each word's count in the raw train text, and the end-of-sentence marker once per sentence."""
    lines = raw_lines(tiny_data_bin, "train", side)
    return Counter(word for line in lines for word in line) + Counter({"</s>": len(lines)})


def edges_for(counts: Counter) -> tuple[int, ...]:
    """Three band edges that split the corpus's distinct word counts into four non-empty bands."""
    distinct = sorted(set(counts.values()))
    return tuple(distinct[len(distinct) * k // 4] for k in (1, 2, 3))


# -- bands, labels, shares (no model) ------------------------------------------------------------------------------


def test_bands_put_each_count_below_its_edge():
    import torch

    counts = torch.tensor([0, 9, 10, 99, 100, 999, 1000, 10**6])
    assert bands(counts, (10, 100, 1000)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert band_labels((10, 100, 1000)) == ["< 10", "10-99", "100-999", ">= 1000"]
    assert band_labels((5,)) == ["< 5", ">= 5"]


@pytest.mark.parametrize("edges", [(), (10, 10), (100, 10), (0, 10), (-1,)])
def test_bad_edges_are_refused(edges):
    with pytest.raises(ToolkitError, match="--edges"):
        check_edges(edges)


def test_shares_add_up_to_the_difference_of_the_means():
    base = [{"band": "a", "tokens": 10, "nll": 4.0}, {"band": "b", "tokens": 30, "nll": 1.0},
            {"band": "c", "tokens": 0, "nll": None}]  # fmt: skip
    other = [{"band": "a", "tokens": 10, "nll": 5.0}, {"band": "b", "tokens": 30, "nll": 0.5},
             {"band": "c", "tokens": 0, "nll": None}]  # fmt: skip
    mean = {name: sum(r["tokens"] * r["nll"] for r in rows if r["tokens"]) / 40
            for name, rows in (("base", base), ("other", other))}  # fmt: skip
    got = shares(base, other)
    assert got[0] == pytest.approx(0.25) and got[1] == pytest.approx(-0.375) and got[2] is None
    assert sum(s for s in got if s is not None) == pytest.approx(mean["other"] - mean["base"])
    with pytest.raises(ToolkitError, match="not the same split"):
        shares(base, [dict(other[0], tokens=11), *other[1:]])


# -- a tiny trained model, through the command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(tiny_data_bin, tmp_path_factory):
    """The analysis of one tiny model under two names (valid and train), beside fairseq-generate --score-reference
    and fairseq-validate on the same checkpoint."""
    root = tmp_path_factory.mktemp("token_loss")
    save = root / "ckpt"
    run_cli("train", train_args(tiny_data_bin, save, ["--optimizer", "adam"], max_update=30, extra=["--lr", "1e-2"]))
    ckpt = save / "checkpoint_last.pt"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    common = ["--user-dir", PLUGIN_DIR, "--task", "translation", "--path", ckpt, "--cpu", "--max-tokens", "4096"]
    score = subprocess.Popen(
        [sys.executable, "-m", "fairseq_cli.generate", tiny_data_bin, *map(str, common), "--gen-subset", "valid",
         "--score-reference", "--beam", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT,
    )  # fmt: skip
    validate = subprocess.Popen(
        [sys.executable, "-m", "fairseq_cli.validate", tiny_data_bin, *map(str, common)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT,
    )  # fmt: skip
    edges = edges_for(raw_counts(tiny_data_bin, "tgt"))
    out = root / "out"
    proc = cli("--data-bin", tiny_data_bin, "--checkpoints", f"first={ckpt}", f"second={save}", "--out", out,
               "--subsets", "valid", "train", "--edges", *edges, "--cpu", "--max-tokens", "300")  # fmt: skip
    score_out = score.communicate(timeout=600)[0]
    validate_out = validate.communicate(timeout=600)[0]
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert score.returncode == 0 and validate.returncode == 0, (score_out + validate_out)[-5000:]
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest  # the checkpoint is only read
    return {"ckpt": ckpt, "edges": edges, "stdout": proc.stdout, "out": out, "score": score_out,
            "validate": validate_out, "result": json.loads((out / "token_loss.json").read_text())}  # fmt: skip


def reference_bands(tiny_data_bin, score_out: str, edges: tuple[int, ...]) -> dict:
    """The bands computed from fairseq-generate's P- lines (log2 p of each reference token and of EOS) and the raw
    text's counts: {"target_bands": [(tokens, mean nll)], "source_bands": [...], "all": (tokens, mean nll)}."""
    tgt_counts, src_counts = raw_counts(tiny_data_bin, "tgt"), raw_counts(tiny_data_bin, "src")
    valid_tgt, valid_src = raw_lines(tiny_data_bin, "valid", "tgt"), raw_lines(tiny_data_bin, "valid", "src")
    scores = {int(m.group(1)): [float(x) for x in m.group(2).split()]
              for m in re.finditer(r"^P-(\d+)\t(.*)$", score_out, re.M)}  # fmt: skip
    assert sorted(scores) == list(range(len(valid_tgt)))

    def band(count: int) -> int:
        return sum(count >= e for e in edges)

    sums = {kind: [[0, 0.0] for _ in range(len(edges) + 1)] for kind in ("target_bands", "source_bands")}
    for i, words in enumerate(valid_tgt):
        assert len(scores[i]) == len(words) + 1  # every word and EOS
        rarest = band(min(src_counts[w] for w in valid_src[i]))
        for word, logp in zip([*words, "</s>"], scores[i], strict=True):
            for kind, b in (("target_bands", band(tgt_counts[word])), ("source_bands", rarest)):
                sums[kind][b][0] += 1
                sums[kind][b][1] += -logp
    out = {kind: [(n, s / n if n else None) for n, s in rows] for kind, rows in sums.items()}
    n = sum(r[0] for r in sums["target_bands"])
    out["all"] = (n, sum(r[1] for r in sums["target_bands"]) / n)
    return out


@pytest.mark.slow
def test_bands_match_fairseq_score_reference_and_raw_counts(measured, tiny_data_bin):
    expected = reference_bands(tiny_data_bin, measured["score"], measured["edges"])
    record = measured["result"]["models"]["first"]["valid"]
    for kind in ("target_bands", "source_bands"):
        got = record[kind]
        assert [r["band"] for r in got] == band_labels(measured["edges"])
        assert [r["tokens"] for r in got] == [n for n, _ in expected[kind]]
        for r, (_, nll) in zip(got, expected[kind], strict=True):
            assert (r["nll"] is None) == (nll is None)
            if nll is not None:
                assert r["nll"] == pytest.approx(nll, abs=2e-4)  # P- lines are printed to 4 decimals
    assert sum(r["tokens"] > 0 for r in record["target_bands"]) >= 3  # the edges split the corpus for real
    assert record["all"]["tokens"] == expected["all"][0]
    assert record["all"]["nll"] == pytest.approx(expected["all"][1], abs=2e-4)
    assert record["sentences"] == 40


@pytest.mark.slow
def test_the_mean_over_all_tokens_is_fairseq_validates_nll(measured):
    m = re.search(r"valid on 'valid' subset \| loss [0-9.]+ \| nll_loss ([0-9.]+)", measured["validate"])
    assert m, measured["validate"][-2000:]
    assert measured["result"]["models"]["first"]["valid"]["all"]["nll"] == pytest.approx(float(m.group(1)), abs=6e-4)


@pytest.mark.slow
def test_train_counts_and_train_split(measured, tiny_data_bin):
    result = measured["result"]
    assert result["train_counts"] == {"src": sum(raw_counts(tiny_data_bin, "src").values()),
                                      "tgt": sum(raw_counts(tiny_data_bin, "tgt").values())}  # fmt: skip
    train = result["models"]["first"]["train"]
    assert train["sentences"] == 400
    assert train["all"]["tokens"] == result["train_counts"]["tgt"]
    for kind in ("target_bands", "source_bands"):
        assert sum(r["tokens"] for r in train[kind]) == train["all"]["tokens"]
        weighted = sum(r["tokens"] * r["nll"] for r in train[kind] if r["tokens"]) / train["all"]["tokens"]
        assert weighted == pytest.approx(train["all"]["nll"], rel=1e-9)


@pytest.mark.slow
def test_one_checkpoint_under_two_names_and_the_table(measured):
    result = measured["result"]
    first, second = (result["models"][n] for n in ("first", "second"))
    assert first["checkpoint"] == second["checkpoint"] == str(measured["ckpt"])
    for subset in ("valid", "train"):
        assert first[subset] == second[subset]
    progress = [line for line in measured["stdout"].splitlines() if line.startswith("sage-analyze-token-loss: ")]
    assert [line.split(": ")[1] for line in progress[:-1]] == ["first", "second"]  # a line per model, then "wrote"
    wrote = f"sage-analyze-token-loss: wrote {measured['out'] / 'token_loss.json'}"
    assert measured["stdout"].endswith(table(result) + "\n" + wrote + "\n")
    assert "| band | tokens | first | second | second - first (share) |" in measured["stdout"]
    assert "+0.000 (+0.0000)" in measured["stdout"]
    assert result["edges"] == list(measured["edges"]) and result["subsets"] == ["valid", "train"]


@pytest.mark.slow
def test_max_sentences_scores_the_first_sentences(measured, tiny_data_bin, tmp_path):
    options = TokenLossOptions(data_bin=tiny_data_bin, checkpoints=(f"m={measured['ckpt']}",), out=tmp_path,
                               subsets=("valid",), edges=measured["edges"], max_sentences=5, cpu=True)  # fmt: skip
    record = analysis.run(options)["models"]["m"]["valid"]
    assert record["sentences"] == 5
    assert record["all"]["tokens"] == sum(len(w) + 1 for w in raw_lines(tiny_data_bin, "valid", "tgt")[:5])
    assert json.loads((tmp_path / "token_loss.json").read_text())["max_sentences"] == 5


# -- bad input: refused with a message naming the option or file, nothing written -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, message",
    [
        ({"--edges": ["100", "10"]}, "--edges must be increasing positive counts, got 100 10"),
        ({"--edges": ["0"]}, "--edges must be increasing positive counts, got 0"),
        ({"--subsets": ["nope"]}, "has no binarised 'nope' split (--subsets)"),
        ({"--subsets": ["valid", "valid"]}, "--subsets: a split is given twice"),
        ({"--max-sentences": ["0"]}, "--max-sentences must be positive, got 0"),
        ({"--max-tokens": ["0"]}, "--max-tokens must be positive, got 0"),
        ({"--multiplier-batches": ["-1"]}, "--multiplier-batches must be 0 or more, got -1"),
        ({"--checkpoints": ["a=/nonexistent/ckpt.pt"]}, "checkpoint a: /nonexistent/ckpt.pt does not exist"),
        ({"--checkpoints": ["a={tmp}/X", "a={tmp}/X"]}, "the name 'a' is given twice"),
        ({"--checkpoints": ["justapath"]}, "--checkpoints takes NAME=PATH, got 'justapath'"),
        ({"--data-bin": ["/nonexistent"]}, "--data-bin /nonexistent is not a folder"),
    ],
)
def test_bad_input_is_refused(change, message, tiny_data_bin, tmp_path):
    (tmp_path / "X").touch()
    (tmp_path / "Y").touch()
    args = {"--data-bin": [tiny_data_bin], "--checkpoints": [f"a={tmp_path / 'X'}"], "--out": [tmp_path / "out"]}
    args.update({k: [str(x).format(tmp=tmp_path) for x in v] for k, v in change.items()})
    proc = cli(*[x for k, v in args.items() for x in (k, *v)], timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "token_loss.json").exists()


@pytest.mark.slow
def test_a_data_bin_without_train_is_refused(tiny_data_bin, tmp_path):
    partial = tmp_path / "bin"
    partial.mkdir()
    for f in tiny_data_bin.iterdir():
        if not f.name.startswith("train."):
            (partial / f.name).symlink_to(f)
    proc = cli("--data-bin", partial, "--checkpoints", f"a={tmp_path}", "--out", tmp_path / "out", timeout=120)
    assert proc.returncode != 0
    assert "has no binarised 'train' split (the token counts are taken from it)" in proc.stderr


@pytest.mark.slow
def test_an_empty_split_and_a_checkpoint_of_other_dictionaries_are_named(measured, tiny_data_bin, tmp_path):
    """One line naming the file and what is wrong (fairseq: "cannot mmap an empty file", a size-mismatch traceback)."""
    ckpt = measured["ckpt"]
    empty = data_bin_variant(tiny_data_bin, tmp_path / "empty", empty_split="valid")
    proc = cli("--data-bin", empty, "--checkpoints", f"a={ckpt}", "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{empty / 'valid.src-tgt.src.bin'} is empty: the 'valid' split of {empty} (--subsets) has no sentences" in (
        proc.stderr
    )
    other = data_bin_variant(tiny_data_bin, tmp_path / "other", extra_entries=8)
    proc = cli("--data-bin", other, "--checkpoints", f"a={ckpt}", "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    n = len((tiny_data_bin / "dict.src.txt").read_text().splitlines()) + 4  # and fairseq's 4 special symbols
    assert (
        f"{ckpt} was trained with a dictionary of {n} entries for its encoder, but {other / 'dict.src.txt'} has {n + 8}"
        in (proc.stderr)
    )
    assert not (tmp_path / "out").exists()


# -- the SAGE multiplier of the embedding rows ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sage_models(tiny_data_bin, tmp_path_factory, measured):
    """Two tiny models trained with adam_sage (every tensor; attention and feed-forward only), and the command line's
    multiplier measurement of them and of the Adam model (3 batches)."""
    root = tmp_path_factory.mktemp("token_loss_sage")
    ckpts = {}
    for name, extra in (("all", []), ("attn_ffn", ["--sage-params", "attn_ffn"])):
        sage = ["--optimizer", "adam_sage", "--sage-beta3", "0.75", *extra]
        run_cli("train", train_args(tiny_data_bin, root / name, sage, max_update=30, extra=["--lr", "1e-2"]))
        ckpts[name] = root / name / "checkpoint_last.pt"
    out = root / "out"
    proc = cli("--data-bin", tiny_data_bin, "--checkpoints", f"sage={ckpts['all']}", f"attn_ffn={ckpts['attn_ffn']}",
               f"adam={measured['ckpt']}", "--out", out, "--multiplier-batches", "3", "--max-tokens", "300",
               "--edges", *measured["edges"], "--cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    return {"ckpts": ckpts, "stdout": proc.stdout, "result": json.loads((out / "token_loss.json").read_text())}


@pytest.mark.slow
def test_multipliers_only_for_sage_tensors(sage_models):
    models = sage_models["result"]["models"]
    assert models["adam"]["multipliers"] == {"measured": False, "reason": "trained with adam, not a SAGE optimizer"}
    assert "adam: no multipliers (trained with adam, not a SAGE optimizer)" in sage_models["stdout"]
    attn_ffn = models["attn_ffn"]["multipliers"]
    assert attn_ffn["measured"] and attn_ffn["tensors"] == {}
    assert attn_ffn["embedding_tensors_without_sage"] == ["decoder.embed_tokens.weight", "encoder.embed_tokens.weight"]
    assert 0 < attn_ffn["other_sage_tensors_r_mean"] < 4
    sage = models["sage"]["multipliers"]
    assert sage["beta3"] == 0.75 and sage["bias_correction"] is True and sage["batches"] == 3
    assert {name: t["side"] for name, t in sage["tensors"].items()} == {
        "encoder.embed_tokens.weight": "source", "decoder.embed_tokens.weight": "target"}  # fmt: skip
    assert "| encoder.embed_tokens.weight | " in sage_models["stdout"]


@pytest.mark.slow
def test_multipliers_match_the_formula_on_the_same_batch(sage_models, tiny_data_bin, tmp_path):
    """One batch measured by the tool, and the multiplier recomputed here from the checkpoint's saved Ibar and step
    with the formula of SAGE.md, on the same batch with the same dropout (same seed)."""
    import torch

    from sage_toolkit.redundancy.model import batches, load

    ckpt = sage_models["ckpts"]["all"]
    edges = (60, 75, 100)
    options = TokenLossOptions(data_bin=tiny_data_bin, checkpoints=(f"m={ckpt}",), out=tmp_path, subsets=("valid",),
                               edges=edges, multiplier_batches=1, seed=3, max_tokens=300, cpu=True)  # fmt: skip
    got = analysis.run(options)["models"]["m"]["multipliers"]

    model, task, _, criterion = load(ckpt, tiny_data_bin, False)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    state, group = saved["last_optimizer_state"]["state"], saved["last_optimizer_state"]["param_groups"][0]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    task.load_dataset("train", combine=False, epoch=1)
    train = task.dataset("train")
    model.train()
    torch.manual_seed(3)
    sample = next(iter(batches(task, model, "train", 300, shuffle=True, seed=3)))
    loss, size, _ = criterion(model, sample)
    (loss / size).backward()
    b3, eps = group["beta3"], group["eps"]
    for name, side, tokens in (("encoder.embed_tokens.weight", "src", sample["net_input"]["src_tokens"]),
                               ("decoder.embed_tokens.weight", "tgt", sample["target"])):  # fmt: skip
        p = dict(model.named_parameters())[name]
        s = state[names.index(name)]
        sens = (p.detach().double() * p.grad.double()).abs()
        smoothed = (b3 * s["exp_avg_sens"].double() + (1 - b3) * sens) / (1 - b3 ** (int(s["step"]) + 1))
        row_r = (((sens - smoothed).abs() + eps**2) / (smoothed + eps**2)).mean(dim=1)
        count = Counter(int(t) for i in range(len(train)) for t in getattr(train, side)[i])
        in_batch = set(tokens.flatten().tolist()) - {task.source_dictionary.pad()}  # the same pad on both sides
        for where in ("in_batch", "not_in_batch"):
            for b, row in enumerate(got["tensors"][name][where]):
                members = [i for i in range(p.shape[0]) if sum(count[i] >= e for e in edges) == b
                           and (i in in_batch) == (where == "in_batch")]  # fmt: skip
                assert row["row_batches"] == len(members), (name, where, row)
                if members:
                    assert row["r_mean"] == pytest.approx(float(row_r[members].mean()), rel=1e-9), (name, where, row)
    in_target = set(sample["target"].flatten().tolist()) - {task.target_dictionary.pad()}
    assert sum(r["row_batches"] for r in got["tensors"]["decoder.embed_tokens.weight"]["in_batch"]) == len(in_target)


@pytest.mark.slow
def test_multiplier_batches_beyond_the_split_are_refused(sage_models, tiny_data_bin, tmp_path):
    proc = cli("--data-bin", tiny_data_bin, "--checkpoints", f"s={sage_models['ckpts']['all']}", "--out", tmp_path,
               "--multiplier-batches", "100000", "--cpu")  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--multiplier-batches 100000: the train split has only" in proc.stderr
    assert not (tmp_path / "token_loss.json").exists()


# -- the committed analyses of the converged study's grid models (RESULTS.md) ---------------------------------------

COMMITTED = sorted((ROOT / "results").glob("*/token_loss*/token_loss.json"))


@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.parent.relative_to(ROOT)) for p in COMMITTED])
def test_committed_tables_come_from_their_json(path):
    result = json.loads(path.read_text())
    assert (path.parent / "token_loss.md").read_text() == table(result) + "\n"
    for record in result["models"].values():
        for subset in result["subsets"]:
            for kind in ("target_bands", "source_bands"):
                rows = record[subset][kind]
                assert sum(r["tokens"] for r in rows) == record[subset]["all"]["tokens"]
                mean = sum(r["tokens"] * r["nll"] for r in rows if r["tokens"]) / record[subset]["all"]["tokens"]
                assert mean == pytest.approx(record[subset]["all"]["nll"], rel=1e-9)
        if record.get("multipliers", {}).get("measured"):
            measured = record["multipliers"]
            for tensor in measured["tensors"].values():  # every row is in a batch or not, on every batch
                rows = sum(r["row_batches"] for where in ("in_batch", "not_in_batch") for r in tensor[where])
                assert rows % measured["batches"] == 0


def test_the_committed_analyses_exist():
    assert {p.parent.name for p in COMMITTED} >= {"token_loss", "token_loss_multipliers"}


def test_group_table_means_and_differences():
    def model(nll_rare: float, nll_frequent: float, multipliers=None) -> dict:
        rows = [{"band": "< 10", "tokens": 10, "nll": nll_rare}, {"band": ">= 10", "tokens": 30, "nll": nll_frequent}]
        record = {"valid": {"sentences": 5, "all": {"tokens": 40, "nll": (10 * nll_rare + 30 * nll_frequent) / 40},
                            "target_bands": rows, "source_bands": rows}}  # fmt: skip
        return record if multipliers is None else {**record, "multipliers": multipliers}

    def measured(r_in: float) -> dict:
        rows = {"in_batch": [{"band": "< 10", "row_batches": 3, "r_mean": r_in}],
                "not_in_batch": [{"band": "< 10", "row_batches": 5, "r_mean": 1.0}]}  # fmt: skip
        return {"measured": True, "tensors": {"encoder.embed_tokens.weight": {"side": "source", **rows}},
                "other_sage_tensors_r_mean": 0.5}  # fmt: skip

    result = {"subsets": ["valid"], "models": {
        "adam/seed1": model(4.0, 1.0), "adam/seed2": model(6.0, 1.0),
        "sage/seed1": model(3.0, 1.5, measured(2.0)), "sage/seed2": model(5.0, 1.5, measured(3.0))}}  # fmt: skip
    text = analysis.group_table(result)
    assert "| band | tokens | adam (2) | sage (2) | sage - adam |" in text
    # rare band: adam 5 ± 1.414, sage 4 ± 1.414, difference -1 ± sqrt(2/2 + 2/2)
    assert "| < 10 | 10 | 5.000 ± 1.414 | 4.000 ± 1.414 | -1.000 ± 1.414 |" in text
    assert "| >= 10 | 30 | 1.000 ± 0.000 | 1.500 ± 0.000 | +0.500 ± 0.000 |" in text
    assert "| all | 40 | 2.000 ± 0.354 | 2.125 ± 0.354 | +0.125 ± 0.354 |" in text
    assert "sage: SAGE multiplier r of the embedding rows, mean ± std over 2 models" in text
    assert "| encoder.embed_tokens.weight | < 10 | 2.500 ± 0.707 | 1.000 ± 0.000 |" in text
    assert "adam: SAGE multiplier" not in text
