"""data_prep against the real reference data in ../shared/data (skipped only where that folder is absent)."""

from __future__ import annotations

import json

import pytest

from data_prep import check_iwslt14_bpe, check_multi30k_tok, multi30k
from data_prep import text as T
from data_prep.common import read_lines
from tests.fairseq_utils import SHARED_DATA
from tests.test_data_prep import run_main, train_reads

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} (the real reference data) is absent")


def test_iwslt14_bpe_with_the_standard_codes_is_byte_identical(capsys):
    """Our BPE step with bpe10k/code on tok/{valid,test}.{de,en} == bpe10k/{valid,test}.{de,en}; removing it == tok/.

    Runs data_prep/check_iwslt14_bpe.sh's module in-process and checks its report and exit status."""
    rc = check_iwslt14_bpe.main(["--shared-dir", str(SHARED_DATA / "iwslt14-de-en"), "--no-detok"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name, lines in (("valid.de", 7283), ("valid.en", 7283), ("test.de", 6750), ("test.en", 6750)):
        assert (
            f"{name}: {lines} lines; apply-bpe with bpe10k/code == bpe10k/{name}: IDENTICAL; "
            f"remove-bpe == tok/{name}: IDENTICAL"
        ) in out
    for lang in ("de", "en"):  # the train sample made with this table: remove-bpe, then our BPE, gives it back
        assert f"train_sample4200.bpe10k.{lang}: 4200 lines; remove-bpe then apply-bpe with bpe10k/code" in out
    assert out.count("IDENTICAL") == 10 and "DIFFERENT" not in out and "OK: byte-identical" in out


def test_multi30k_tokenisation_agrees_with_the_datasets_own_files():
    """Our tokenisation (task1-tokenize.sh with sacremoses) vs tok/*.lc.norm.tok.*: the valid and test files agree
    line for line (on the full train set 1 German line of 29,000 differs: data_prep/check_multi30k_tok.py)."""
    res = check_multi30k_tok.compare(SHARED_DATA / "multi30k", ("val", "test_2016_flickr", "test_2017_flickr"))
    assert res["total"] == 2 * (1014 + 1000 + 1000)
    for name, (agree, total, diffs) in res["files"].items():
        assert agree == total, f"{name}: {diffs[:3]}"


@pytest.mark.slow
@pytest.mark.parametrize("seg", ["bpe", "spm"])
def test_prepare_multi30k_from_the_local_copy_gives_a_data_bin_fairseq_trains_on(tmp_path, capsys, seg):
    """prepare_multi30k.sh --local-dir ../shared/data/multi30k, first 1,000 training pairs (full size: docs/data.md)."""
    dest = tmp_path / seg
    size = ["--bpe-size", "1000"] if seg == "bpe" else ["--spm-size", "1000"]
    argv = ["--local-dir", SHARED_DATA / "multi30k", "--segmentation", seg, *size, "--train-size", "1000",
            "--dest", dest]  # fmt: skip
    rc, _, err = run_main(multi30k, argv, capsys)  # = data_prep/prepare_multi30k.sh ARGS
    assert rc == 0, err
    info = json.loads((dest / "prep.json").read_text())
    assert info["pairs"] == {"train": 1000, "valid": 1014, "test": 1000, "test1": 1000}
    raw = read_lines(SHARED_DATA / "multi30k" / "raw" / "test_2016_flickr.de.gz")
    seg_text = read_lines(dest / "text" / "test.de")
    if seg == "spm":
        assert info["remove_bpe"] == "sentencepiece"
        assert info["lowercased"] is False  # sentencepiece is trained on the original, cased text
        assert info["references"]["test1"]["en"] == {"detokenized": "ref/test1.en", "tokenized": None}
        assert [T.remove_spm(x) for x in seg_text] == [" ".join(x.split()) for x in raw]
    else:
        theirs = read_lines(SHARED_DATA / "multi30k" / "tok" / "test_2016_flickr.lc.norm.tok.de.gz")
        assert info["remove_bpe"] == "subword_nmt"
        assert info["lowercased"] is True and info["bleu_tok_kind"] == "tokenized"
        assert info["references"]["test1"]["en"] == {"detokenized": "ref/test1.en", "tokenized": "ref/test1.tok.en"}
        assert [T.remove_bpe(x) for x in seg_text] == theirs
    train_reads(dest, tmp_path)
