"""data_prep: the processing rules, the embedded demo corpus, every dataset script on tiny inputs in the real layouts,
and the error cases (message, non-zero exit, nothing left behind). Needs no network and no ../shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from data_prep import demo, iwslt14, multi30k, wmt16
from data_prep import text as T
from data_prep.common import cli_main, read_lines
from sage_toolkit.evaluation import facts
from tests.data_fixtures import make_fake_iwslt14, make_fake_multi30k, make_fake_wmt16
from tests.fairseq_utils import ROOT, run_cli, train_log

TINY_TRAIN = [
    "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32",
    "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "500", "--max-update", "2", "--cpu",
    "--num-workers", "0", "--no-save", "--no-progress-bar", "--log-format", "json", "--log-interval", "1",
]  # fmt: skip


def assert_old_manifest_reads_the_same(info: dict, dest: Path) -> None:
    """A prep.json without the evaluation keys (the previous data_prep's) gives evaluation the same facts."""
    old = {key: value for key, value in info.items() if key not in facts.KEYS}
    for split in ("valid", "test"):
        assert facts.evaluation_facts(old, dest, split) == facts.evaluation_facts(info, dest, split)


def run_main(module, argv, capsys):
    """Run a data_prep CLI in-process as its __main__ would; returns (exit status, stdout, stderr)."""
    rc = cli_main(module.__name__, module.main, [str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Names in ``folder`` other than ``keep``: outputs, temporary folders or lock files a failed run left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def train_reads(data_bin: Path, tmp_path: Path) -> list[dict]:
    """fairseq-train runs two updates on ``data_bin``; returns its per-update log records."""
    proc = run_cli("train", [data_bin, "--task", "translation", *TINY_TRAIN, "--save-dir", tmp_path / "ckpt"])
    records = train_log(proc)
    assert len(records) == 2 and all(float(r["loss"]) > 0 for r in records), proc.stderr[-2000:]
    return records


# ---------------------------------------------------------------------------------------------------------------------
# Processing rules
# ---------------------------------------------------------------------------------------------------------------------


def test_clean_corpus_follows_moses_rules():
    src = ["a b c", "", "a  b ", "w " * 176, "a b c d", "x|y z", "a"]
    tgt = ["a b", "a", "c d", "w", "a b", "x y", "b c"]
    # kept: 0 (ratio 1.5), 2 (white space collapsed: 2/2), 5 ("|" removed: "xy z", 2/2); dropped: 1 (empty),
    # 3 (176 words > 175), 4 (4/2 > 1.5), 6 (2/1 > 1.5).
    assert T.clean_corpus(src, tgt, 1, 175, 1.5) == [0, 2, 5]
    assert T.clean_corpus(["a " * 80], ["b " * 80], 1, 80, 9) == [0]
    assert T.clean_corpus(["a " * 81], ["b " * 81], 1, 80, 9) == []


def test_iwslt_text_extraction():
    lines = ["<url>http://x</url>", "<keywords>k</keywords>", "<talkid>1</talkid>", "<title>A talk</title>",
             "<description>About it</description>", "Hallo Welt.", "<reviewer></reviewer>"]  # fmt: skip
    assert iwslt14.train_text(lines) == ["A talk", "About it", "Hallo Welt.", "<reviewer></reviewer>"]
    xml = ["<doc>", '<seg id="1"> It\u2019s here. </seg>', "</doc>", '<seg id="22">Two</seg>  ']
    assert iwslt14.seg_text(xml) == ["It's here.", "Two"]
    assert iwslt14.seg_text(xml, normalize_quote=False) == ["It\u2019s here.", "Two"]


def test_moses_and_bpe_round_trip(tmp_path):
    tok = T.moses_tokenize(['Das ist\'s, sagte "er".'], "de")
    assert tok == ["Das ist &apos; s , sagte &quot; er &quot; ."]  # German: the apostrophe is split off both sides
    assert T.moses_tokenize(['It\'s "here".'], "en") == ["It &apos;s &quot; here &quot; ."]
    codes = T.learn_bpe(["das ist ein test", "das sind tests", "ein test ist das"] * 5, 20, tmp_path / "code")
    bpe = T.BPEApplier(codes)
    lines = ["das ist ein testlauf", "unbekannt"]
    assert [T.remove_bpe(x) for x in bpe(lines)] == lines
    assert any("@@ " in x for x in bpe(lines))
    assert T.remove_spm("\u2581Hal lo \u2581Welt .") == "Hallo Welt."


# ---------------------------------------------------------------------------------------------------------------------
# Embedded demo corpus
# ---------------------------------------------------------------------------------------------------------------------


def test_demo_corpus_is_embedded_with_attribution():
    folder = ROOT / "data_prep" / "demo"
    pairs = demo.read_tatoeba()
    assert len(pairs) == 169813
    assert pairs[0] == ("Hi.", "Hallo!")
    notice = (folder / "ATTRIBUTION.md").read_text()
    assert "CC BY 2.0" in notice and "tatoeba.org" in notice and "manythings.org/anki" in notice
    assert "creativecommons.org/licenses/by/2.0" in (folder / "_about.txt").read_text()


def test_demo_split_keeps_valid_and_test_sources_out_of_train():
    pairs = demo.read_tatoeba()
    parts = demo.split_pairs(pairs, src_index=1, valid_size=1000, test_size=1000, seed=1)
    train_src = {demo.source_key(de) for _, de in parts["train"]}
    for name in ("valid", "test"):
        keys = [demo.source_key(de) for _, de in parts[name]]
        assert len(keys) == len(set(keys)) == 1000  # one pair per source sentence
        assert not train_src & set(keys), f"{name} source sentences occur in train"
        assert not {de for _, de in parts["train"]} & {de for _, de in parts[name]}  # verbatim too
    assert not {demo.source_key(de) for _, de in parts["valid"]} & {demo.source_key(de) for _, de in parts["test"]}
    # Every pair is used once, except the extra translations of valid/test sources (one reference kept).
    assert len(parts["train"]) + 2000 <= len(pairs)
    again = demo.split_pairs(pairs, src_index=1, valid_size=1000, test_size=1000, seed=1)
    assert again == parts  # deterministic


@pytest.mark.slow
def test_prepare_demo_builds_a_data_bin_that_fairseq_trains_on(tmp_path, capsys):
    dest = tmp_path / "demo"
    argv = ["--train-size", "1500", "--valid-size", "50", "--test-size", "50", "--spm-size", "600", "--dest", dest]
    rc, _, err = run_main(demo, argv, capsys)
    assert rc == 0, err
    info = json.loads((dest / "prep.json").read_text())
    assert info["pairs"] == {"train": 1500, "valid": 50, "test": 50}
    assert info["remove_bpe"] == "sentencepiece" and info["source_lang"] == "de" and info["target_lang"] == "en"
    assert (dest / "spm.model").is_file() and (dest / "dict.de.txt").read_text() == (dest / "dict.en.txt").read_text()
    # what evaluation reads: original-case text, plain tokenized BLEU, no tokenised reference with sentencepiece
    assert (info["lowercased"], info["bleu_tok_kind"]) == (False, "tokenized")
    assert info["references"]["test"]["en"] == {"detokenized": "ref/test.en", "tokenized": None}
    assert set(info["references"]) == {"valid", "test"} and set(info["references"]["valid"]) == {"de", "en"}
    assert_old_manifest_reads_the_same(info, dest)
    # The references are the original text; removing the pieces from the binarised text's source gives it back.
    refs, seg = read_lines(dest / "ref" / "test.en"), read_lines(dest / "text" / "test.en")
    assert [T.remove_spm(x) for x in seg] == refs
    train_reads(dest, tmp_path)


@pytest.mark.parametrize("name", ["demo", "iwslt14", "multi30k", "wmt16"])
def test_shell_entry_points_reach_their_module(name):
    proc = subprocess.run(
        ["bash", ROOT / "data_prep" / f"prepare_{name}.sh", "--help"],
        capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"usage: prepare_{name}" in proc.stdout and "--segmentation {bpe,spm}" in proc.stdout


def test_shell_entry_point_error_exit_status(tmp_path):
    proc = subprocess.run(
        ["bash", ROOT / "data_prep" / "prepare_multi30k.sh", "--local-dir", tmp_path / "nowhere", "--dest",
         tmp_path / "out"],
        capture_output=True, text=True, env=dict(os.environ, PYTHON=sys.executable), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"prepare_multi30k: error: --local-dir {tmp_path / 'nowhere'} is not a folder" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------------
# Dataset scripts on tiny inputs in the real file layouts
# ---------------------------------------------------------------------------------------------------------------------


def test_iwslt14_pipeline_on_a_tiny_de_en_folder(tmp_path, capsys):
    src = make_fake_iwslt14(tmp_path / "orig", n_train=300, n_test=4)
    files = iwslt14.find_inputs(src, "de", "en")
    splits = iwslt14.read_splits(files, "de", "en", "bpe")
    train, valid, test = splits
    n_text = 300 + 6 * 2  # each talk header contributes its title and description lines
    kept = len(train) + len(valid)
    assert kept <= n_text and len(valid) == kept // 23 and len(test) == 5 * 4
    assert all(line == line.lower() for line in train.tok["en"] + test.tok["de"])
    # test = the five sets in prepare-iwslt14.sh's order; valid = every 23rd cleaned pair (checked on its source side)
    xml = [read_lines(files[f"{name}.en"]) for name in iwslt14.TEST_SETS]
    assert test.raw["en"] == [x for lines in xml for x in iwslt14.seg_text(lines, normalize_quote=False)]
    tok_de = T.moses_tokenize(iwslt14.train_text(read_lines(files["train.de"])), "de")
    tok_en = T.moses_tokenize(iwslt14.train_text(read_lines(files["train.en"])), "en")
    cleaned = [T.clean_line(tok_de[i]).lower() for i in T.clean_corpus(tok_de, tok_en, 1, 175, 1.5)]
    assert valid.tok["de"] == cleaned[22::23] and train.tok["de"] == [x for n, x in enumerate(cleaned, 1) if n % 23]
    # sentencepiece keeps the same pairs, in their original form
    spm_splits = iwslt14.read_splits(files, "de", "en", "spm")
    assert [sp.raw for sp in spm_splits] == [sp.raw for sp in splits] and spm_splits[0].tok is None
    # The standard-codes path (--bpe-codes, as with IWSLT'14's published bpe10k/code): codes learned here on train.
    codes = T.learn_bpe(train.tok["de"] + train.tok["en"], 200, tmp_path / "code")
    argv = ["--local-dir", src, "--dest", tmp_path / "bin", "--bpe-codes", codes]
    rc, out, err = run_main(iwslt14, argv, capsys)
    assert rc == 0, err
    info = json.loads((tmp_path / "bin" / "prep.json").read_text())
    assert info["pairs"] == {"train": len(train), "valid": len(valid), "test": 20}
    assert info["joined_dictionary"] is False and info["bpe_merges"] == 200
    assert (info["lowercased"], info["bleu_tok_kind"]) == (True, "tokenized")  # lowercased BPE text
    for split in ("valid", "test"):
        for lang in ("de", "en"):
            refs = info["references"][split][lang]
            assert refs == {"detokenized": f"ref/{split}.{lang}", "tokenized": f"ref/{split}.tok.{lang}"}
            assert all((tmp_path / "bin" / path).is_file() for path in refs.values())
    assert_old_manifest_reads_the_same(info, tmp_path / "bin")
    bpe = T.BPEApplier(codes)
    for split in splits:
        assert read_lines(tmp_path / "bin" / "text" / f"{split.name}.de") == bpe(split.tok["de"])
    bpe_text = read_lines(tmp_path / "bin" / "text" / "test.en")
    assert [T.remove_bpe(x) for x in bpe_text] == read_lines(tmp_path / "bin" / "ref" / "test.tok.en")
    # Re-running after success is a no-op.
    stamp = (tmp_path / "bin" / "prep.json").stat().st_mtime_ns
    rc, out, _ = run_main(iwslt14, argv, capsys)
    assert rc == 0 and "nothing to do" in out and (tmp_path / "bin" / "prep.json").stat().st_mtime_ns == stamp


def test_multi30k_bpe_on_tiny_files(tmp_path, capsys):
    """(sentencepiece: test_prepare_demo_..., and on the real Multi30k files in test_data_prep_shared.py)"""
    src = make_fake_multi30k(tmp_path / "m30k", n_train=200, n_eval=10)
    dest = tmp_path / "bpe"
    rc, _, err = run_main(multi30k, ["--local-dir", src, "--dest", dest, "--bpe-size", "150"], capsys)
    assert rc == 0, err
    info = json.loads((dest / "prep.json").read_text())
    assert info["pairs"] == {"train": 200, "valid": 10, "test": 10} and info["segmentation"] == "bpe"
    assert (info["lowercased"], info["bleu_tok_kind"]) == (True, "tokenized")
    assert info["references"]["test"]["de"] == {"detokenized": "ref/test.de", "tokenized": "ref/test.tok.de"}
    assert_old_manifest_reads_the_same(info, dest)
    assert (dest / "train.en-de.de.bin").is_file() and (dest / "test.en-de.en.idx").is_file()
    raw = read_lines(src / "raw" / "test_2016_flickr.de.gz")
    assert read_lines(dest / "ref" / "test.raw.de") == raw
    assert read_lines(dest / "ref" / "test.tok.de") == multi30k.tokenize(raw, "de")
    assert [T.remove_bpe(x) for x in read_lines(dest / "text" / "test.de")] == multi30k.tokenize(raw, "de")
    assert read_lines(dest / "ref" / "test.de") == T.moses_detokenize(multi30k.tokenize(raw, "de"), "de")
    assert leftovers(tmp_path, {"m30k", "bpe"}) == []


def test_wmt16_published_files_are_binarised_as_given(tmp_path, capsys):
    src = make_fake_wmt16(tmp_path / "wmt", n_train=150, n_eval=10)
    rc, _, err = run_main(wmt16, ["--local-dir", src, "--dest", tmp_path / "bin"], capsys)
    assert rc == 0, err
    for split, stem in (("train", "train.tok.clean"), ("valid", "newstest2013.tok"), ("test", "newstest2014.tok")):
        for lang in ("en", "de"):
            assert read_lines(tmp_path / "bin" / "text" / f"{split}.{lang}") == read_lines(
                src / f"{stem}.bpe.32000.{lang}"
            )
    assert read_lines(tmp_path / "bin" / "ref" / "test.de") == read_lines(src / "newstest2014.de")
    assert (tmp_path / "bin" / "dict.en.txt").read_text() == (tmp_path / "bin" / "dict.de.txt").read_text()
    assert (tmp_path / "bin" / "bpe.32000").is_file()
    info = json.loads((tmp_path / "bin" / "prep.json").read_text())
    assert (info["lowercased"], info["bleu_tok_kind"], info["remove_bpe"]) == (False, "compound_split", "subword_nmt")
    assert info["references"]["test"]["de"] == {"detokenized": "ref/test.de", "tokenized": "ref/test.tok.de"}
    assert_old_manifest_reads_the_same(info, tmp_path / "bin")


# ---------------------------------------------------------------------------------------------------------------------
# Errors: a clear message, a non-zero exit, and nothing left behind
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def m30k(tmp_path):
    """Uncompressed tiny Multi30k files that the error tests then break."""
    return make_fake_multi30k(tmp_path / "in", n_train=60, n_eval=5, gz=False) / "raw"


def expect_failure(module, argv, capsys, tmp_path, *fragments):
    rc, _, err = run_main(module, argv, capsys)
    assert rc == 1
    for fragment in fragments:
        assert fragment in err, err
    assert leftovers(tmp_path, {"in"}) == []  # no output folder, no .partial folder, no lock file
    return err


def test_error_missing_file(m30k, tmp_path, capsys):
    (m30k / "val.de").unlink()
    expect_failure(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out"], capsys, tmp_path,
                   "missing input file", "val.de", str(m30k))  # fmt: skip


def test_error_line_counts_differ(m30k, tmp_path, capsys):
    lines = (m30k / "train.en").read_text().splitlines()
    (m30k / "train.en").write_text("\n".join(lines[:-1]) + "\n")
    expect_failure(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out"], capsys, tmp_path,
                   f"{m30k / 'train.en'} has 59 lines but {m30k / 'train.de'} has 60")  # fmt: skip


def test_error_empty_file(m30k, tmp_path, capsys):
    (m30k / "test_2016_flickr.en").write_text("")
    expect_failure(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out"], capsys, tmp_path,
                   f"input file {m30k / 'test_2016_flickr.en'} is empty")  # fmt: skip


def test_error_invalid_utf8(m30k, tmp_path, capsys):
    with open(m30k / "train.de", "ab") as f:
        f.write(b"Ein Stra\xdfe\n")  # Latin-1, not UTF-8
    expect_failure(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out"], capsys, tmp_path,
                   f"{m30k / 'train.de'} is not valid UTF-8", "(line 61)")  # fmt: skip


def test_error_invalid_gzip(m30k, tmp_path, capsys):
    (m30k / "train.de").rename(m30k / "train.de.gz")  # named .gz but not gzip data
    expect_failure(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out"], capsys, tmp_path,
                   f"cannot read {m30k / 'train.de.gz'}")  # fmt: skip


def test_error_unknown_language_pair(m30k, tmp_path, capsys):
    expect_failure(multi30k, ["--local-dir", m30k, "--src", "fr", "--tgt", "en", "--dest", tmp_path / "out"],
                   capsys, tmp_path, "unknown language pair fr-en for multi30k", "supported: en-de, de-en")  # fmt: skip
    expect_failure(demo, ["--src", "de", "--tgt", "cs", "--dest", tmp_path / "out"], capsys, tmp_path,
                   "unknown language pair de-cs for tatoeba-demo")  # fmt: skip


def test_error_iwslt_test_set_line_counts(tmp_path, capsys):
    src = make_fake_iwslt14(tmp_path / "in", n_train=60, n_test=3)
    xml = src / "de-en" / "IWSLT14.TED.tst2011.de-en.en.xml"
    xml.write_text(xml.read_text().replace('<seg id="3">', '<notseg id="3">'))
    expect_failure(iwslt14, ["--local-dir", src, "--dest", tmp_path / "out"], capsys, tmp_path,
                   "IWSLT14.TED.tst2011.de-en.de.xml (<seg> lines) has 3 lines but",
                   "IWSLT14.TED.tst2011.de-en.en.xml (<seg> lines) has 2")  # fmt: skip


def test_error_dest_exists_otherwise(m30k, tmp_path, capsys):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("not a data_prep output")
    rc, _, err = run_main(multi30k, ["--local-dir", m30k, "--dest", dest], capsys)
    assert rc == 1 and f"{dest} exists but is not a completed data_prep output" in err
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]  # untouched
    (dest / "prep.json").write_text(json.dumps({"settings": {"dataset": "multi30k", "bpe_size": 50}}))
    rc, _, err = run_main(multi30k, ["--local-dir", m30k, "--dest", dest], capsys)
    assert rc == 1 and f"{dest} already holds data prepared with other settings" in err
    assert leftovers(tmp_path, {"in", "out"}) == []


def test_failure_inside_the_build_leaves_nothing(m30k, tmp_path, capsys, monkeypatch):
    import data_prep.build as build_module

    def broken_preprocess(*args, **kwargs):
        raise build_module.DataPrepError("fairseq-preprocess failed (1): simulated")

    monkeypatch.setattr(build_module, "fairseq_preprocess", broken_preprocess)
    expect_failure(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out", "--bpe-size", "50"], capsys, tmp_path,
                   "simulated")  # fmt: skip


def test_interrupted_run_leaves_no_output_and_the_rerun_starts_clean(m30k, tmp_path):
    """SIGKILL while the output is being written: no data-bin appears; the next run removes the leftovers."""
    dest, partial = tmp_path / "out", tmp_path / ".out.partial"
    cmd = ["bash", ROOT / "data_prep" / "prepare_multi30k.sh", "--local-dir", m30k, "--dest", dest, "--bpe-size", "50"]
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not dest.exists() and partial.exists()  # what a killed run leaves: only the temporary folder
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "removing the leftovers of an interrupted run" in done.stdout
    assert (dest / "prep.json").is_file() and not partial.exists()
    assert leftovers(tmp_path, {"in", "out"}) == []


# ---------------------------------------------------------------------------------------------------------------------
# The download paths, with file:// URLs standing in for the servers
# ---------------------------------------------------------------------------------------------------------------------


def test_iwslt14_download_path_fetches_and_extracts_the_archive(tmp_path, capsys, monkeypatch):
    src = make_fake_iwslt14(tmp_path / "server", n_train=120, n_test=2)
    with tarfile.open(tmp_path / "de-en.tgz", "w:gz") as tar:
        tar.add(src / "de-en", arcname="de-en")
    missing = (tmp_path / "missing.tgz").as_uri()
    monkeypatch.setattr(iwslt14, "URLS", [missing, (tmp_path / "de-en.tgz").as_uri()])  # the first one fails
    argv = ["--download-dir", tmp_path / "dl", "--dest", tmp_path / "bin", "--segmentation", "spm", "--spm-size", "200"]
    rc, _, err = run_main(iwslt14, argv, capsys)
    assert rc == 0, err
    assert (tmp_path / "dl" / "de-en.tgz").read_bytes() == (tmp_path / "de-en.tgz").read_bytes()
    assert not list((tmp_path / "dl").glob("*.part"))
    info = json.loads((tmp_path / "bin" / "prep.json").read_text())
    assert info["pairs"]["test"] == 10 and info["remove_bpe"] == "sentencepiece"
    assert info["lowercased"] is False  # IWSLT'14 lowercases its tokenised (BPE) text only, not sentencepiece's
    assert_old_manifest_reads_the_same(info, tmp_path / "bin")


def test_multi30k_download_path(tmp_path, capsys, monkeypatch):
    server = make_fake_multi30k(tmp_path / "server", n_train=80, n_eval=5) / "raw"
    monkeypatch.setattr(multi30k, "URL", server.as_uri() + "/{name}.gz")
    monkeypatch.setattr(multi30k, "SPLITS", multi30k.SPLITS[:3])  # the fake server has no test_2017_flickr
    argv = ["--download-dir", tmp_path / "dl", "--dest", tmp_path / "bin", "--bpe-size", "60"]
    rc, _, err = run_main(multi30k, argv, capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(p.name for p in server.iterdir())


def test_download_failure_is_a_clear_error_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    monkeypatch.setattr(wmt16, "URL", (tmp_path / "nowhere" / "wmt16_en_de.tar.gz").as_uri())
    expect_failure(wmt16, ["--download-dir", tmp_path / "in" / "dl", "--dest", tmp_path / "out"], capsys, tmp_path,
                   "download of file://", "failed", "pass the folder with --local-dir")  # fmt: skip
    assert not (tmp_path / "in" / "dl").exists() or not any((tmp_path / "in" / "dl").iterdir())


# ---------------------------------------------------------------------------------------------------------------------
# What a server may answer instead of the file: a web page (a proxy's error, Google Drive's warning), served here by a
# web server on 127.0.0.1
# ---------------------------------------------------------------------------------------------------------------------

PROXY_PAGE = b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head><body>Blocked by proxy</body></html>\n"


class LocalWebServer:
    """``routes``: path (with its query) -> (content type, body); any other path is a 404. ``requests``: the paths
    asked for, in order."""

    def __init__(self):
        import http.server
        import threading

        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                ctype, body = server.routes.get(self.path, ("text/plain", None))
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def web(monkeypatch):
    for name in ("no_proxy", "NO_PROXY"):  # a proxy configured on this machine must not answer for 127.0.0.1
        monkeypatch.setenv(name, "*")
    server = LocalWebServer()
    yield server
    server.close()


def tar_gz_of(folder: Path, archive: Path, arcname: str = ".") -> bytes:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return archive.read_bytes()


@pytest.mark.parametrize("dataset", ["wmt16", "multi30k"])
def test_a_downloaded_web_page_is_deleted_and_named_and_not_reused(dataset, web, tmp_path, capsys, monkeypatch):
    (tmp_path / "in").mkdir()
    module, expected = {"wmt16": (wmt16, "a gzip-compressed tar archive"), "multi30k": (multi30k, "a gzip file")}[
        dataset
    ]
    if module is wmt16:
        monkeypatch.setattr(wmt16, "URL", web.url("/wmt16_en_de.tar.gz"))
        web.routes["/wmt16_en_de.tar.gz"] = ("text/html", PROXY_PAGE)
    else:
        monkeypatch.setattr(multi30k, "URL", web.url("/{name}.gz"))
        web.routes.update({f"/{n}.{lang}.gz": ("text/html", PROXY_PAGE) for n, _, _ in multi30k.SPLITS for lang in
                           ("de", "en")})  # fmt: skip
    download_dir = tmp_path / "in" / "dl"
    argv = ["--download-dir", download_dir, "--dest", tmp_path / "out"]
    for _run in range(2):  # the second run downloads again: nothing of the first is taken for the file
        err = expect_failure(module, argv, capsys, tmp_path, "an HTML page titled 'Access denied'",
                             f"not {expected}: first bytes b'<!DOCTYPE html>", "(deleted)", "--local-dir")  # fmt: skip
        assert list(download_dir.iterdir()) == [], err
    assert len(web.requests) == 2


def test_an_earlier_download_that_is_a_web_page_is_replaced(web, tmp_path, capsys, monkeypatch):
    """An earlier run saved a web page as the archive; this run deletes it, gets another web page from the first
    address (deleted, said) and the archive from the second."""
    archive = tar_gz_of(make_fake_iwslt14(tmp_path / "server", n_train=120, n_test=2) / "de-en", tmp_path / "a.tgz",
                        "de-en")  # fmt: skip
    web.routes["/mirror/de-en.tgz"] = ("text/html; charset=utf-8", PROXY_PAGE)
    web.routes["/wit3/de-en.tgz"] = ("application/x-gzip", archive)
    monkeypatch.setattr(iwslt14, "URLS", [web.url("/mirror/de-en.tgz"), web.url("/wit3/de-en.tgz")])
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "de-en.tgz").write_bytes(b"<html><body>Please log in</body></html>")  # the earlier run's
    argv = ["--download-dir", tmp_path / "dl", "--dest", tmp_path / "bin", "--segmentation", "spm", "--spm-size", "200"]
    rc, out, err = run_main(iwslt14, argv, capsys)
    assert rc == 0, err
    assert f"the earlier download {tmp_path / 'dl' / 'de-en.tgz'} is an HTML page, not a gzip-compressed tar" in out
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["de-en.tgz"]
    assert (tmp_path / "dl" / "de-en.tgz").read_bytes() == archive
    assert web.requests == ["/mirror/de-en.tgz", "/wit3/de-en.tgz"]
    assert json.loads((tmp_path / "bin" / "prep.json").read_text())["source"] == web.url("/wit3/de-en.tgz")


def test_google_drive_warning_page_with_a_relative_form_action(web, tmp_path, capsys, monkeypatch):
    """Google Drive's "can't scan this file for viruses" page: its form (here with a relative action, and a query
    that a browser would drop) is submitted with its hidden fields, and the archive arrives."""
    archive = tar_gz_of(make_fake_wmt16(tmp_path / "server", n_train=150, n_eval=10), tmp_path / "w.tar.gz")
    page = (b'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
            b'<form id="download-form" action="download?stale=1" method="get">'
            b'<input type="hidden" name="id" value="XYZ"><input type="hidden" name="confirm" value="t">'
            b'<input type="submit" value="Download anyway"></form></body></html>')  # fmt: skip
    web.routes["/drive/uc?export=download&id=XYZ"] = ("text/html; charset=utf-8", page)
    web.routes["/drive/download?id=XYZ&confirm=t"] = ("application/octet-stream", archive)
    monkeypatch.setattr(wmt16, "URL", web.url("/drive/uc?export=download&id=XYZ"))
    argv = ["--download-dir", tmp_path / "dl", "--dest", tmp_path / "bin", "--segmentation", "spm", "--spm-size", "200"]
    rc, _, err = run_main(wmt16, argv, capsys)
    assert rc == 0, err
    assert web.requests == ["/drive/uc?export=download&id=XYZ", "/drive/download?id=XYZ&confirm=t"]
    assert (tmp_path / "dl" / wmt16.ARCHIVE).read_bytes() == archive
    # A form that points to no web address is refused, naming it.
    web.routes["/drive/uc?export=download&id=XYZ"] = (
        "text/html",
        page.replace(b"download?stale=1", b"javascript:go()"),
    )
    refused = tmp_path / "refused"
    (refused / "in").mkdir(parents=True)
    expect_failure(wmt16, ["--download-dir", refused / "in" / "dl", "--dest", refused / "out"], capsys, refused,
                   "download form points to 'javascript:go()', not to a web address")  # fmt: skip


def test_error_malformed_demo_corpus(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "deu.txt"
    bad.write_text("Hi.\tHallo!\nno tab on this line\n")
    expect_failure(demo, ["--corpus", bad, "--dest", tmp_path / "out"], capsys, tmp_path,
                   f"{bad} line 2: expected 'English<TAB>German'")  # fmt: skip


def test_error_concurrent_run_on_the_same_dest(m30k, tmp_path, capsys):
    import fcntl

    with open(tmp_path / ".out.lock", "w") as lock:  # another run holds the lock on tmp_path/out
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, _, err = run_main(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out", "--bpe-size", "50"], capsys)
    assert rc == 1 and f"another data_prep run is writing {tmp_path / 'out'}" in err
    assert leftovers(tmp_path, {"in", ".out.lock"}) == []  # no output, no .partial folder; the lock is the other's


def test_error_concurrent_run_names_the_process_that_holds_the_lock(m30k, tmp_path, capsys):
    """The lock of a data_prep run records its PID (sage_toolkit.atomic's locks): the refusal names it."""
    import fcntl

    with open(tmp_path / ".out.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"data_prep {os.getpid()}\n")
        lock.flush()
        rc, _, err = run_main(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out", "--bpe-size", "50"], capsys)
    lock_path = tmp_path / ".out.lock"
    assert rc == 1
    assert f"another data_prep run is writing {tmp_path / 'out'} (lock {lock_path}; held by PID {os.getpid()})" in err


def test_a_lock_left_by_a_killed_run_is_taken_over_and_removed(m30k, tmp_path, capsys):
    """A run killed without unwinding leaves its lock file (with its PID) and its .partial folder: the next run says
    so, takes both over and leaves neither."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".out.lock").write_text(f"data_prep {int(dead.stdout)}\n")
    (tmp_path / ".out.partial").mkdir()
    rc, out, _ = run_main(multi30k, ["--local-dir", m30k, "--dest", tmp_path / "out", "--bpe-size", "50"], capsys)
    assert rc == 0 and f"took over the lock left by PID {int(dead.stdout)}" in out
    assert "removing the leftovers of an interrupted run" in out
    assert leftovers(tmp_path, {"in", "out"}) == []


def test_domain_adaptation_shares_one_vocabulary(tmp_path, capsys):
    """Tatoeba (general) and Multi30k (in-domain) prepared together: one BPE, one dictionary, the demo's split."""
    from data_prep import domain_adaptation as da

    m30k = make_fake_multi30k(tmp_path / "m30k", n_train=120, n_eval=8)
    dest = tmp_path / "da"
    argv = ["--multi30k-dir", m30k, "--dest", dest, "--bpe-size", "200", "--tatoeba-train-size", "300",
            "--valid-size", "20", "--test-size", "25"]  # fmt: skip
    rc, _, err = run_main(da, argv, capsys)
    assert rc == 0, err
    general, indomain = dest / "general", dest / "indomain"
    for name in ("code", "dict.de.txt", "dict.en.txt"):
        assert (general / name).read_bytes() == (indomain / name).read_bytes(), name
    assert (general / "dict.de.txt").read_bytes() == (dest / "dict.txt").read_bytes()
    assert (general / "code").read_bytes() == (dest / "code").read_bytes()
    g_info, i_info = (json.loads((d / "prep.json").read_text()) for d in (general, indomain))
    assert g_info["pairs"] == {"train": 300, "valid": 20, "test": 25}
    assert i_info["pairs"] == {"train": 120, "valid": 8, "test": 8}
    assert g_info["lowercased"] and i_info["lowercased"] and g_info["source_lang"] == "de"
    # Every training token of both domains is in the dictionary: no <unk> in either train set.
    symbols = {line.split()[0] for line in read_lines(dest / "dict.txt")}
    for d in (general, indomain):
        for lang in ("de", "en"):
            assert {tok for line in read_lines(d / "text" / f"train.{lang}") for tok in line.split()} <= symbols
    # The Tatoeba split is the demo's: no held-out source sentence is a training source.
    parts = demo.split_pairs(demo.read_tatoeba(), 1, 20, 25, 1)
    held_out = {demo.source_key(p[1]) for p in parts["valid"] + parts["test"]}
    assert not held_out & {demo.source_key(p[1]) for p in parts["train"][:300]}
    assert read_lines(general / "ref" / "test.raw.de") == [p[1] for p in parts["test"]]
    assert read_lines(indomain / "ref" / "test.raw.en") == read_lines(m30k / "raw" / "test_2016_flickr.en.gz")
    # The same settings again: nothing to do; other settings into the same folder: refused, nothing touched.
    rc, out, _ = run_main(da, argv, capsys)
    assert rc == 0 and "nothing to do" in out
    rc, _, err = run_main(da, [*argv[:-1], "26"], capsys)
    assert rc != 0 and "already holds data prepared with other settings" in err
    assert leftovers(tmp_path, {"m30k", "da"}) == []
