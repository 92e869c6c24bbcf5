"""Test fixtures: tiny stand-ins for data_prep's downloadable sources, in their real file layouts.

The sentences are real (slices of the embedded Tatoeba corpus); only the packaging imitates each dataset:
IWSLT'14's ``de-en.tgz`` members, Multi30k's ``raw/*.gz``, Google's WMT'16 folder.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from data_prep import text as T
from data_prep.demo import read_tatoeba
from data_prep.iwslt14 import TEST_SETS


def tatoeba_pairs(n: int, offset: int = 0, step: int = 37) -> list[tuple[str, str]]:
    """``n`` (German, English) pairs spread over the corpus (every ``step``-th pair from ``offset``)."""
    pairs = read_tatoeba()
    picked = [pairs[(offset + i * step) % len(pairs)] for i in range(n)]
    return [(de, en) for en, de in picked]


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def make_fake_iwslt14(folder: Path, n_train: int = 300, n_test: int = 4) -> Path:
    """``folder/de-en/`` as in ``de-en.tgz``: ``train.tags.de-en.{de,en}`` and the five test-set XML files."""
    root = folder / "de-en"
    pairs = tatoeba_pairs(n_train + 5 * n_test)
    train, rest = pairs[:n_train], pairs[n_train:]
    for k, lang in enumerate(("de", "en")):
        lines = []
        for t in range(0, n_train, 50):  # one "talk" per 50 lines, with the header lines the script removes
            lines += [
                f"<url>http://www.ted.com/talks/talk{t}.html</url>",
                f"<keywords>talks, {t}</keywords>",
                f"<talkid>{t}</talkid>",
                f"<title>Talk {t}</title>",
                f"<description>TED Talk {t}</description>",
            ]
            lines += [p[k] for p in train[t : t + 50]]
        _write(root / f"train.tags.de-en.{lang}", lines)
        for s, name in enumerate(TEST_SETS):
            segs = [p[k] for p in rest[s * n_test : (s + 1) * n_test]]
            xml = ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>", f'<doc docid="{s}">', "<talkid>1</talkid>"]
            xml += [f'<seg id="{i + 1}"> {x} </seg>' for i, x in enumerate(segs)]
            xml += ["</doc>", "</mteval>"]
            _write(root / f"{name}.de-en.{lang}.xml", xml)
    return folder


def make_fake_multi30k(folder: Path, n_train: int = 300, n_eval: int = 20, gz: bool = True) -> Path:
    """``folder/raw/{train,val,test_2016_flickr}.{en,de}[.gz]``."""
    pairs = tatoeba_pairs(n_train + 2 * n_eval, offset=11)
    parts = {"train": pairs[:n_train], "val": pairs[n_train : n_train + n_eval], "test_2016_flickr": pairs[-n_eval:]}
    for name, ps in parts.items():
        for k, lang in enumerate(("de", "en")):
            _write(folder / "raw" / (f"{name}.{lang}.gz" if gz else f"{name}.{lang}"), [p[k] for p in ps], gz=gz)
    return folder


def make_fake_wmt16(folder: Path, n_train: int = 300, n_eval: int = 20) -> Path:
    """The files of Google's wmt16_en_de.tar.gz that the preparation reads (BPE'd with a trivial merge table)."""
    pairs = tatoeba_pairs(n_train + 2 * n_eval, offset=5)
    parts = {
        "train": pairs[:n_train],
        "newstest2013": pairs[n_train : n_train + n_eval],
        "newstest2014": pairs[-n_eval:],
    }
    codes = folder / "bpe.32000"
    tok_train = {lang: T.moses_tokenize([p[k] for p in parts["train"]], lang) for k, lang in enumerate(("de", "en"))}
    folder.mkdir(parents=True, exist_ok=True)
    T.learn_bpe(tok_train["de"] + tok_train["en"], 200, codes)
    bpe = T.BPEApplier(codes)
    for name, ps in parts.items():
        for k, lang in enumerate(("de", "en")):
            raw = [p[k] for p in ps]
            tok = T.moses_tokenize(raw, lang)
            base = "train.tok.clean" if name == "train" else f"{name}.tok"
            _write(folder / f"{name}.{lang}", raw)
            _write(folder / f"{base}.{lang}", tok)
            _write(folder / f"{base}.bpe.32000.{lang}", bpe(tok))
    return folder
