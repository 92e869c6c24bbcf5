"""scripts/evaluate.py (sage_toolkit.evaluation) end to end on a tiny trained model; its scores against the sacrebleu
and fairseq-score CLIs.

One model is trained (module fixture) on a data-bin made by data_prep's WMT'16 script from a tiny synthetic input in
the layout of Google's WMT'16 folder: a learnable word-for-word "translation" whose target has BPE-split words
(``b@@ 8``), hyphenated compounds (``x10-y10``, what compound splitting acts on) and a final full stop that Moses
detokenisation attaches. So the prepared layout (prep.json, ref/, --remove-bpe, compound-split tokenized BLEU, Moses
detokenisation) is exercised on a trained model's output. A copy of the data-bin without prep.json and ref/ exercises
the "any fairseq data-bin" options.

What a tiny model learns in 100 updates differs between CPUs (on an AVX-512 machine it reached tokenized BLEU 0.00,
elsewhere more), so no assertion here depends on how well it translates: the scores are checked against independent
scorers (fairseq-score, the sacrebleu command line) on the same files, and the files against fairseq-generate's output
transformed independently (compound splitting, Moses detokenisation).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sage_toolkit.errors import ToolkitError
from sage_toolkit.evaluation import commands, dataset, generation, scoring
from sage_toolkit.evaluation import evaluate as evaluate_module
from tests.fairseq_utils import ROOT, data_bin_variant, run_cli, train_args

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "evaluate.py"
_SACREBLEU_SCRIPT = Path(sys.executable).parent / "sacrebleu"  # the venv's console script
SACREBLEU = [str(_SACREBLEU_SCRIPT)] if _SACREBLEU_SCRIPT.is_file() else [sys.executable, "-m", "sacrebleu"]

JSON_KEYS = {
    "subset", "n_sentences", "checkpoints", "beam", "lenpen", "bleu_tok", "bleu_tok_kind", "sacrebleu",
    "sacrebleu_signature", "chrf", "chrf_signature", "bp", "sys_len", "ref_len", "hypotheses",
}  # fmt: skip


def run_main(argv) -> int:
    """scripts/evaluate.py's main (commands.evaluate_main) in-process; its exit status (errors leave through
    SystemExit, as from the shell)."""
    try:
        return commands.evaluate_main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def _word(i: int, lang: str) -> str:
    if lang == "en":
        return f"a{i}"
    if i >= 10:
        return f"x{i}-y{i}"  # a compound: compound splitting applies
    if i >= 8:
        return f"b@@ {i}"  # two BPE pieces
    return f"b{i}"


def make_google_wmt16_folder(folder: Path, n_train: int = 400, n_eval: int = 20, seed: int = 0) -> Path:
    """Google's WMT'16 file layout (what data_prep.wmt16 reads), filled with a synthetic learnable en->de corpus."""
    from data_prep import text as T

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("newstest2013", n_eval), ("newstest2014", n_eval)):
        seg: dict[str, list[str]] = {"en": [], "de": []}
        for _ in range(n):
            ids = [rng.randrange(12) for _ in range(rng.randint(3, 6))]
            for lang, lines in seg.items():
                lines.append(" ".join(_word(i, lang) for i in ids) + " .")
        for lang, lines in seg.items():
            tok = [T.remove_bpe(x) for x in lines]
            base = "train.tok.clean" if name == "train" else f"{name}.tok"
            (folder / f"{base}.bpe.32000.{lang}").write_text("\n".join(lines) + "\n")
            (folder / f"{base}.{lang}").write_text("\n".join(tok) + "\n")
            (folder / f"{name}.{lang}").write_text("\n".join(T.moses_detokenize(tok, lang)) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(prepared data-bin, save dir): 100 updates; update checkpoints at 30 and 60, checkpoint_last at 100."""
    from data_prep import wmt16
    from data_prep.common import cli_main

    root = tmp_path_factory.mktemp("evaluate")
    google = make_google_wmt16_folder(root / "google")
    data_bin = root / "wmt16-tiny"
    assert cli_main("prepare_wmt16", wmt16.main, ["--local-dir", str(google), "--dest", str(data_bin)]) == 0
    save = root / "ckpt"
    optimizer = ["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)"]
    extra = ["--lr", "2e-2", "--warmup-updates", "20", "--save-interval-updates", "30"]
    run_cli("train", train_args(data_bin, save, optimizer, max_update=100, extra=extra))
    return data_bin, save


def sacrebleu_cli(ref: Path, hyp: Path, *extra: str) -> tuple[list[dict], list[str]]:
    """(JSON records with 15 decimals, the ``-b`` score lines) of ``sacrebleu REF -i HYP -m bleu chrf``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [*SACREBLEU, str(ref), "-i", str(hyp), "-m", "bleu", "chrf", *extra]
    full = subprocess.run([*cmd, "-w", "15"], capture_output=True, text=True, check=True, env=env).stdout
    short = subprocess.run([*cmd, "-b"], capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(full), [x.strip(",") for x in short.split() if x not in "[]"]


def assert_sacrebleu_equals_cli(result: dict, ref: Path, *extra: str) -> None:
    records, short = sacrebleu_cli(ref, Path(result["hypotheses"]), *extra)
    bleu, chrf = records
    assert bleu["name"] == "BLEU" and chrf["name"] == "chrF2"
    assert bleu["score"] == float(f"{result['sacrebleu']:.15f}")
    assert chrf["score"] == float(f"{result['chrf']:.15f}")
    assert bleu["signature"] == result["sacrebleu_signature"]
    assert chrf["signature"] == result["chrf_signature"]
    assert short == [f"{result['sacrebleu']:.1f}", f"{result['chrf']:.1f}"]  # the CLI's default output
    assert f"hyp_len = {result['sys_len']} ref_len = {result['ref_len']}" in bleu["verbose_score"]


def test_prepared_data_bin_end_to_end_through_the_command_line(trained):
    data_bin, save = trained
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, SCRIPT, "--data-bin", data_bin, "--checkpoint", save, "--beam", "4", "--lenpen", "0.6",
           "--max-tokens", "2000", "--cpu"]  # fmt: skip
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    out = save / "eval.test.json"
    assert summary.startswith("sage-evaluate: test (20 sentences)") and summary.endswith(f"-> {out}")
    r = json.loads(out.read_text())
    assert JSON_KEYS <= set(r)
    assert r["checkpoints"] == [str((save / "checkpoint_last.pt").resolve())]  # no checkpoint_best.pt
    assert (r["subset"], r["n_sentences"], r["beam"], r["lenpen"]) == ("test", 20, 4, 0.6)
    assert (r["bleu_tok_kind"], r["remove_bpe"], r["detokenizer"]) == ("compound_split", "subword_nmt", "moses")
    assert r["options"]["beam"] == 4 and r["options"]["checkpoints"] == r["checkpoints"]
    assert r["threads"] == 1  # OMP_NUM_THREADS=1 above: the count fairseq-generate ran with, for the compute tables
    assert r["subword_markers"]["count"] == 0  # --remove-bpe subword_nmt (prep.json) removed every "@@ "

    # the files scored are fairseq-generate's H- lines (source order), transformed independently here
    from data_prep.text import moses_detokenize

    generated = Path(r["generate_output"]).read_text(encoding="utf-8").splitlines()
    h_lines = dict(line[2:].split("\t", 2)[::2] for line in generated if line.startswith("H-"))
    h_lines = [h_lines[str(i)] for i in range(20)]
    assert Path(r["tokenized_hypotheses"]).read_text().splitlines() == [scoring.compound_split(h) for h in h_lines]
    assert Path(r["hypotheses"]).read_text().splitlines() == moses_detokenize(h_lines, "de")
    tok_hyps = Path(r["tokenized_hypotheses"]).read_text().splitlines()
    assert r["bleu_tok_sys_len"] == sum(len(h.split()) for h in tok_hyps)

    # tokenized BLEU: the reference is ref/test.tok.de compound-split as compound_split_bleu.sh does
    tok_ref = (data_bin / "ref" / "test.tok.de").read_text().splitlines()
    assert Path(r["tokenized_references"]).read_text().splitlines() == [scoring.compound_split(x) for x in tok_ref]
    assert any("x10 ##AT##-##AT## y10" in x for x in Path(r["tokenized_references"]).read_text().splitlines())
    # hypotheses: one per source sentence, BPE removed, Moses-detokenised (no " ." left)
    hyps = Path(r["hypotheses"]).read_text().splitlines()
    assert len(hyps) == 20 and not any("@@" in h or h.endswith(" .") for h in hyps)

    # our tokenized BLEU == fairseq-score on the same files
    score = run_cli("score", ["--sys", r["tokenized_hypotheses"], "--ref", r["tokenized_references"]])
    assert score.stdout.strip().splitlines()[-1] == r["bleu_tok_string"]
    assert r["bleu_tok_string"].startswith(f"BLEU4 = {r['bleu_tok']:.2f}, ")
    # our sacreBLEU and chrF == the sacrebleu command line on ref/test.de and our hypotheses file
    assert r["sacrebleu_reference"] == str(data_bin / "ref" / "test.de") and not r["sacrebleu_lowercase"]
    assert_sacrebleu_equals_cli(r, data_bin / "ref" / "test.de")
    # and the same scorers give 100 to the references themselves: scorers, references and splitting fit together
    tok_refs = Path(r["tokenized_references"]).read_text().splitlines()
    assert scoring.fairseq_bleu(tok_refs, tok_refs)["score"] == pytest.approx(100.0)
    refs = (data_bin / "ref" / "test.de").read_text().splitlines()
    assert scoring.sacrebleu_scores(refs, refs, lowercase=False)["sacrebleu"] == pytest.approx(100.0)


def test_any_data_bin_with_explicit_options_and_averaging(trained, tmp_path, capsys):
    data_bin, save = trained
    plain = tmp_path / "plain-bin"  # a fairseq data-bin without prep.json and ref/
    plain.mkdir()
    for path in data_bin.glob("*"):
        if path.is_file() and (path.name.startswith("dict.") or path.name.startswith("test.")):
            shutil.copy(path, plain / path.name)
    ref = tmp_path / "reference.de"
    shutil.copy(data_bin / "ref" / "test.de", ref)
    out = tmp_path / "results" / "avg.json"
    argv = ["--data-bin", plain, "--checkpoint", save, "--average-last", "2", "--remove-bpe", "--ref", ref,
            "--lowercase", "--cpu", "--batch-size", "7", "--out", out]  # fmt: skip
    rc = run_main(argv)
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    assert (r["source_lang"], r["target_lang"]) == ("en", "de")  # from the data-bin's file names
    assert r["checkpoints"] == [str((save / n).resolve()) for n in ("checkpoint_4_30.pt", "checkpoint_7_60.pt")]
    averaged = torch.load(r["checkpoint"], map_location="cpu", weights_only=False)
    states = [torch.load(save / n, map_location="cpu", weights_only=False)["model"] for n in r["checkpoints"]]
    name = "decoder.layers.0.fc1.weight"
    torch.testing.assert_close(averaged["model"][name], (states[0][name] + states[1][name]) / 2)
    assert (r["bleu_tok_kind"], r["bleu_tok_reference"]) == ("tokenized", "T- lines of fairseq-generate")
    assert r["sacrebleu_lowercase"] and "case:lc" in r["sacrebleu_signature"] and "case:lc" in r["chrf_signature"]
    assert Path(r["hypotheses"]) == tmp_path / "results" / "avg.hyp.de"
    targets = [x.split("\t", 1)[1] for x in Path(r["generate_output"]).read_text().splitlines() if x.startswith("T-")]
    assert sorted(Path(r["tokenized_references"]).read_text().splitlines()) == sorted(targets)
    assert_sacrebleu_equals_cli(r, ref, "-lc", "--chrf-lowercase")


def test_settings_from_prep_json_of_each_preparation(tmp_path):
    """prep.json files written before they recorded lowercased/bleu_tok_kind/references (the previous data_prep):
    sage_toolkit.evaluation.facts gives what each dataset module recorded, so old folders evaluate as before."""

    def setup(prep: dict):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        (folder / "ref").mkdir(parents=True)
        (folder / "ref" / "test.en").write_text("x\n")
        (folder / "prep.json").write_text(json.dumps(prep))
        options = commands.parse_evaluate_args(["--data-bin", str(folder), "--checkpoint", "unused.pt"])
        return dataset.resolve_setup(options.data_bin, options.subset, options.overrides)

    def prep(dataset, segmentation, remove_bpe):
        return {"settings": {"dataset": dataset}, "source_lang": "de", "target_lang": "en",
                "segmentation": segmentation, "remove_bpe": remove_bpe}  # fmt: skip

    s = setup(prep("iwslt14", "bpe", "subword_nmt"))  # lowercased, Moses-tokenised
    assert (s.lowercase, s.detok, s.bleu_tok_kind, s.remove_bpe) == (True, "moses", "tokenized", "subword_nmt")
    s = setup(prep("iwslt14", "spm", "sentencepiece"))  # original cased text
    assert (s.lowercase, s.detok, s.bleu_tok_kind, s.tok_ref) == (False, "none", "tokenized", None)
    s = setup(prep("multi30k", "bpe", "subword_nmt"))
    assert s.lowercase and s.detok == "moses"
    s = setup(prep("tatoeba-demo", "spm", "sentencepiece"))
    assert (s.lowercase, s.detok, s.remove_bpe) == (False, "none", "sentencepiece")
    s = setup(prep("wmt16", "bpe", "subword_nmt"))
    assert (s.lowercase, s.bleu_tok_kind) == (False, "compound_split")
    assert s.ref.name == "test.en" and s.ref.parent.name == "ref"


def _setup_of(folder: Path, prep: dict, *argv: str) -> dataset.Setup:
    folder.mkdir(parents=True)
    (folder / "prep.json").write_text(json.dumps(prep))
    options = commands.parse_evaluate_args(["--data-bin", str(folder), "--checkpoint", "unused.pt", *argv])
    return dataset.resolve_setup(options.data_bin, options.subset, options.overrides)


def test_settings_are_the_facts_prep_json_records_not_guesses_from_the_dataset_name(tmp_path):
    references = {"test": {"de": {"detokenized": "ref/test.de", "tokenized": "ref/test.tok.de"},
                           "en": {"detokenized": "ref/other.en", "tokenized": None}}}  # fmt: skip
    prep = {"settings": {"dataset": "iwslt14"}, "source_lang": "de", "target_lang": "en", "segmentation": "bpe",
            "remove_bpe": "subword_nmt", "lowercased": False, "bleu_tok_kind": "compound_split",
            "references": references}  # fmt: skip
    s = _setup_of(tmp_path / "a", prep)  # the recorded facts win over what the name "iwslt14" would suggest
    assert (s.lowercase, s.bleu_tok_kind, s.detok, s.remove_bpe) == (False, "compound_split", "moses", "subword_nmt")
    assert (s.ref, s.tok_ref) == (tmp_path / "a" / "ref" / "other.en", None)
    s = _setup_of(tmp_path / "b", prep, "--source-lang", "en", "--target-lang", "de")  # the other direction
    assert (s.ref, s.tok_ref) == (tmp_path / "b" / "ref" / "test.de", tmp_path / "b" / "ref" / "test.tok.de")
    s = _setup_of(tmp_path / "c", prep, "--subset", "valid")  # a split prep.json does not list: the T- lines
    assert (s.ref, s.tok_ref) == (None, None)
    s = _setup_of(tmp_path / "d", {**prep, "lowercased": True, "bleu_tok_kind": "tokenized"}, "--tok-ref", "t.en")
    assert (s.lowercase, s.bleu_tok_kind, s.tok_ref) == (True, "tokenized", Path("t.en"))
    s = _setup_of(tmp_path / "e", prep, "--lowercase", "--bleu-tok-kind", "tokenized", "--ref", "r.en")
    assert (s.lowercase, s.bleu_tok_kind, s.ref) == (True, "tokenized", Path("r.en"))  # the options win


def test_a_prep_json_without_the_facts_and_not_from_data_prep_needs_the_options(tmp_path):
    prep = {"settings": {"dataset": "my-corpus"}, "source_lang": "de", "target_lang": "en", "segmentation": "bpe",
            "remove_bpe": "subword_nmt"}  # fmt: skip
    with pytest.raises(ToolkitError, match="give --lowercase or --no-lowercase, and --bleu-tok-kind") as e:
        _setup_of(tmp_path / "a", prep)
    assert str(tmp_path / "a" / "prep.json") in str(e.value) and "'my-corpus'" in str(e.value)
    with pytest.raises(ToolkitError, match="--bleu-tok-kind"):
        _setup_of(tmp_path / "b", prep, "--no-lowercase")
    s = _setup_of(tmp_path / "c", prep, "--no-lowercase", "--bleu-tok-kind", "tokenized")
    assert (s.lowercase, s.bleu_tok_kind, s.ref, s.tok_ref, s.detok) == (False, "tokenized", None, None, "moses")


def test_compound_split_is_the_scaling_nmt_perl_rule():
    # scripts/compound_split_bleu.sh: perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g'
    lines = ["die Mitte-links-Regierung", "a - b", "-x x- 3-4", "Ab-c-d-e", "über-fällig", ""]
    expected = [
        "die Mitte ##AT##-##AT## links ##AT##-##AT## Regierung",
        "a - b",
        "-x x- 3 ##AT##-##AT## 4",
        "Ab ##AT##-##AT## c-d ##AT##-##AT## e",  # non-overlapping matches, left to right, as Perl's /g
        "über ##AT##-##AT## fällig",
        "",
    ]
    assert [scoring.compound_split(x) for x in lines] == expected
    if shutil.which("perl"):
        perl = subprocess.run(
            ["perl", "-ple", r"s{(\S)-(\S)}{$1 ##AT##-##AT## $2}g"],
            input="\n".join(lines) + "\n", capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert perl.stdout.splitlines() == expected


def test_errors_name_the_path(trained, tmp_path, capsys):
    data_bin, save = trained

    def fails(*argv) -> str:
        rc = run_main(argv)
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("sage-evaluate: error: "), err
        return err

    missing = tmp_path / "nothing"
    assert f"--data-bin {missing} is not a folder" in fails("--data-bin", missing, "--checkpoint", save)
    assert f"checkpoint {missing}.pt does not exist" in fails("--data-bin", data_bin, "--checkpoint", f"{missing}.pt")
    err = fails("--data-bin", data_bin, "--checkpoint", save, "--average-last", "5")
    assert f"cannot average the last 5 checkpoints: {save} has 2 update checkpoints" in err
    err = fails("--data-bin", data_bin, "--checkpoint", save / "checkpoint_last.pt", "--average-last", "2")
    assert "--average-last needs a save dir" in err
    empty = tmp_path / "empty-save"
    empty.mkdir()
    assert "has neither checkpoint_best.pt nor checkpoint_last.pt" in fails(
        "--data-bin", data_bin, "--checkpoint", empty
    )
    no_refs = tmp_path / "no-refs"  # a prepared folder whose ref/ went missing
    shutil.copytree(data_bin, no_refs, ignore=shutil.ignore_patterns("ref"))
    err = fails("--data-bin", no_refs, "--checkpoint", save)
    assert f"the sacreBLEU reference {no_refs / 'ref' / 'test.de'} does not exist" in err
    err = fails("--data-bin", data_bin, "--checkpoint", save, "--subset", "test1")
    assert f"{data_bin / 'test1.en-de.de.idx'} is missing" in err
    out = tmp_path / "out" / "eval.json"
    err = fails("--data-bin", data_bin, "--checkpoint", save, "--ref", missing, "--out", out)
    assert f"the sacreBLEU reference {missing} does not exist" in err
    assert not out.parent.exists()  # nothing written


def test_an_empty_split_and_a_checkpoint_of_other_dictionaries_are_named(trained, tmp_path, capsys):
    """One line naming the file and what is wrong, before fairseq-generate runs (it would stop with "cannot mmap an
    empty file" or a size-mismatch traceback); nothing is written."""
    from fairseq.data import Dictionary

    data_bin, save = trained
    checkpoint = save / "checkpoint_last.pt"

    def fails(data: Path) -> str:
        rc = run_main(["--data-bin", data, "--checkpoint", checkpoint, "--cpu", "--out", tmp_path / "out" / "e.json"])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith("sage-evaluate: error: ") and "Traceback" not in err, err
        return err

    empty = data_bin_variant(data_bin, tmp_path / "empty", empty_split="test")
    err = fails(empty)
    assert f"{empty / 'test.en-de.de.bin'} is empty: the 'test' split of {empty} (--subset) has no sentences" in err
    other = data_bin_variant(data_bin, tmp_path / "other", extra_entries=8)
    n = len(Dictionary.load(str(data_bin / "dict.en.txt")))
    err = fails(other)
    assert (
        f"{checkpoint} was trained with a dictionary of {n} entries for its encoder, but {other / 'dict.en.txt'} "
        f"has {n + 8}: the checkpoint was made for another data-bin"
    ) in err
    assert not (tmp_path / "out").exists()


def test_a_result_made_with_other_settings_is_not_replaced(trained, tmp_path, capsys):
    data_bin, save = trained
    out = tmp_path / "eval.json"
    base = ["--data-bin", data_bin, "--checkpoint", save, "--cpu", "--beam", "2", "--out", out]

    def run(*extra) -> tuple[int, str]:
        rc = run_main([*base, *extra])
        return rc, capsys.readouterr().err

    assert run() == (0, "")
    first, written = out.read_text(), out.stat().st_mtime_ns
    average = save / "checkpoint.avg2.pt"
    averaged = average.stat().st_mtime_ns if average.exists() else None
    # the old script overwrote eval.json here without a word
    for extra, named in (
        (["--beam", "3"], "--beam: 2 there, 3 now"),
        (["--lenpen", "0.6"], "--lenpen: 1.0 there, 0.6 now"),
        (["--average-last", "2"], "--average-last: None there, 2 now"),
        (["--remove-bpe", "none"], "--remove-bpe: 'subword_nmt' there, None now"),
    ):
        rc, err = run(*extra)
        assert rc == 1 and err.startswith(f"sage-evaluate: error: {out} holds a result made with other settings"), err
        assert named in err and "give another --out to keep both, or --overwrite to replace it" in err, err
        assert (out.read_text(), out.stat().st_mtime_ns) == (first, written), "nothing may be written"
    assert (average.stat().st_mtime_ns if average.exists() else None) == averaged, "not even the average"
    rc, err = run("--checkpoint", save / "checkpoint_4_30.pt")  # another checkpoint, the same --out
    assert rc == 1 and "--checkpoint (the checkpoint files)" in err and "checkpoint_4_30.pt" in err, err

    assert run()[0] == 0 and out.stat().st_mtime_ns != written  # the same settings again (more training): replaced
    assert run("--beam", "3", "--overwrite")[0] == 0 and json.loads(out.read_text())["beam"] == 3

    old = tmp_path / "old.json"  # a result written before "options" existed: compared on its top-level keys
    old.write_text(json.dumps({"subset": "test", "beam": 5, "lenpen": 1.0, "bleu_tok": 1.0}))
    rc, err = run("--out", old)
    assert rc == 1 and "--beam: 5 there, 2 now" in err and json.loads(old.read_text())["beam"] == 5, err
    other = tmp_path / "notes.json"
    other.write_text("my notes")
    rc, err = run("--out", other)
    assert rc == 1 and f"--out {other} exists and is not a result of this script" in err, err
    assert other.read_text() == "my notes"


def _fake_generate(monkeypatch, tmp_path, hyps: list[str]) -> None:
    """Stand in for fairseq-generate (a subprocess that writes generate-test.txt): the hypotheses are given, so the
    test does not depend on what a model outputs (and the checkpoint is not read: no check of its dictionaries)."""
    text = tmp_path / "generate.txt"
    lines = []
    for i, h in enumerate(hyps):
        lines += [f"S-{i}\tsource {i}", f"T-{i}\tdas ist {i}", f"H-{i}\t-0.5\t{h}", f"D-{i}\t-0.5\t{h}"]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def command(options, setup, checkpoint, results_dir):
        copy = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
        return [sys.executable, "-c", copy, str(text), str(results_dir / f"generate-{options.subset}.txt")]

    monkeypatch.setattr(generation, "generate_command", command)
    monkeypatch.setattr(evaluate_module, "check_checkpoint_fits", lambda *args: None)


def _any_data_bin(folder: Path) -> Path:
    folder.mkdir()
    for name in ("dict.en.txt", "dict.de.txt", "test.en-de.en.idx", "test.en-de.de.idx"):
        (folder / name).write_text("")
    return folder


def test_hypotheses_with_subword_markers_are_scored_with_a_warning(tmp_path, capsys, monkeypatch):
    data_bin, checkpoint = _any_data_bin(tmp_path / "bin"), tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    runs = iter(range(100))

    def evaluate(hyps: list[str]) -> tuple[dict, str]:
        _fake_generate(monkeypatch, tmp_path, hyps)
        out = tmp_path / f"e{next(runs)}.json"
        assert run_main(["--data-bin", data_bin, "--checkpoint", checkpoint, "--out", out]) == 0
        return json.loads(out.read_text()), capsys.readouterr().err

    r, err = evaluate(["das ist gu@@ t", "das ist 1", "\u2581das \u2581ist", "das kl@@"])  # no --remove-bpe
    warning = err.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith(
        "sage-evaluate: WARNING: 3 of 4 hypotheses (75.0 %) still contain subword markers ('@@' of BPE in 2, "
    ), err
    assert "--remove-bpe none: pass --remove-bpe subword_nmt" in err
    assert r["subword_markers"] == {"count": 3, "fraction": 0.75, "bpe": 2, "sentencepiece": 1,
                                    "warning": warning[0].removeprefix("sage-evaluate: WARNING: ")}  # fmt: skip
    assert r["bleu_tok"] < 100  # scored as they are (the references are the T- lines)

    r, err = evaluate(["\u2581das \u2581ist", "\u2581das \u2581ist \u25811", "das ist 2", "das ist 3"])
    assert r["subword_markers"]["count"] == 2 and "pass --remove-bpe sentencepiece" in err, err

    clean = ["das ist 0", "das ist 1", "e-mail@@example.org", "das ist 3"]  # "@@" inside a word is no marker
    r, err = evaluate(clean)
    assert r["subword_markers"] == {"count": 0, "fraction": 0.0, "bpe": 0, "sentencepiece": 0}
    assert "WARNING" not in err, err
    assert r["bleu_tok"] == pytest.approx(scoring.fairseq_bleu(clean, [f"das ist {i}" for i in range(4)])["score"])
