"""Text processing: Moses tokenisation (sacremoses), the Moses corpus-cleaning filter, BPE (subword-nmt), sentencepiece.

The behaviours reproduce the standard scripts; each function says which one. Nothing here reads or writes the user's
files except where a path is an argument.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from sage_toolkit.evaluation.scoring import moses_detokenize  # noqa: F401 (evaluation's, used here too)

from .common import DataPrepError

# ----------------------------------------------------------------------------------------------------------------------
# Moses (sacremoses)
# ----------------------------------------------------------------------------------------------------------------------

_TOKENIZERS: dict[str, object] = {}
_NORMALIZERS: dict[str, object] = {}


def _tokenizer(lang: str):
    from sacremoses import MosesTokenizer

    if lang not in _TOKENIZERS:
        _TOKENIZERS[lang] = MosesTokenizer(lang=lang)
    return _TOKENIZERS[lang]


def moses_tokenize(lines: Iterable[str], lang: str) -> list[str]:
    """``tokenizer.perl -l LANG`` with its defaults: XML escaping on (``&apos;``, ``&quot;`` ...), no ``-a``.

    This is how fairseq's prepare-iwslt14.sh and Multi30k's task1-tokenize.sh call the Moses tokenizer
    (``-threads N`` only splits the work). Blank or white-space-only lines become empty.
    """
    tok = _tokenizer(lang)
    return [tok.tokenize(line, escape=True, aggressive_dash_splits=False, return_str=True) for line in lines]


def moses_normalize_punct(lines: Iterable[str], lang: str) -> list[str]:
    """``normalize-punctuation.perl -l LANG`` (sacremoses' port).

    The Perl script reads each line with its newline; one of its German/French/Spanish rules
    (``s/(\\.+)\\"(\\s*[^<])/\\"$1$2/g``, move a full stop after a closing quote) therefore also fires at the end of a
    line, where the newline fills ``[^<]``. sacremoses works on the bare line; appending the newline restores the
    Perl behaviour (checked against Multi30k's own tokenised files: data_prep/check_multi30k_tok.py).
    """
    from sacremoses import MosesPunctNormalizer

    if lang not in _NORMALIZERS:
        _NORMALIZERS[lang] = MosesPunctNormalizer(lang=lang)
    norm = _NORMALIZERS[lang]
    return [norm.normalize(line + "\n") for line in lines]


def lowercase(lines: Iterable[str]) -> list[str]:
    """``lowercase.perl`` (Perl's Unicode ``lc``), as Python's ``str.lower``."""
    return [line.lower() for line in lines]


def clean_corpus(
    src: Sequence[str],
    tgt: Sequence[str],
    min_len: int = 1,
    max_len: int = 175,
    ratio: float = 1.5,
    max_word_length: int = 1000,
) -> list[int]:
    """Indices of the pairs that Moses' ``clean-corpus-n.perl -ratio R corpus l1 l2 out MIN MAX`` keeps.

    Per pair, as the Perl script: remove ``|`` (Moses tokenisation escapes it, so this never fires on tokenised text),
    collapse white space, drop the pair if a side is empty, has fewer than MIN or more than MAX space-separated words,
    if either length is more than RATIO times the other, or if a word is longer than 1000 characters. The kept lines
    are the cleaned ones: use :func:`clean_line` on them.
    """
    keep = []
    for i, (s, t) in enumerate(zip(src, tgt, strict=True)):
        s, t = clean_line(s), clean_line(t)
        if not s or not t:
            continue
        ns, nt = s.count(" ") + 1, t.count(" ") + 1
        if not (min_len <= ns <= max_len and min_len <= nt <= max_len):
            continue
        if ns / nt > ratio or nt / ns > ratio:
            continue
        if max(map(len, s.split(" "))) > max_word_length or max(map(len, t.split(" "))) > max_word_length:
            continue
        keep.append(i)
    return keep


def clean_line(line: str) -> str:
    """A line as clean-corpus-n.perl writes it out: ``|`` removed, white space collapsed, no outer spaces."""
    return collapse_ws(line.replace("|", ""))


def collapse_ws(line: str) -> str:
    return " ".join(line.split())


# ----------------------------------------------------------------------------------------------------------------------
# BPE (subword-nmt)
# ----------------------------------------------------------------------------------------------------------------------


def learn_bpe(lines: Iterable[str], num_merges: int, codes_path: Path) -> Path:
    """``subword-nmt learn-bpe -s NUM`` on the given lines (default min frequency 2), writing the merge table."""
    from subword_nmt import learn_bpe as _module

    buf = io.StringIO()
    quiet = getattr(_module, "tqdm", None)
    _module.tqdm = lambda iterator, *a, **k: iterator  # no progress bar in our logs
    try:
        _module.learn_bpe(lines, buf, num_merges)
    finally:
        if quiet is not None:
            _module.tqdm = quiet
    if buf.getvalue().count("\n") <= 1:
        raise DataPrepError(f"BPE learned no merges from the training text (--bpe-size {num_merges})")
    Path(codes_path).write_text(buf.getvalue(), encoding="utf-8")
    return Path(codes_path)


class BPEApplier:
    """``subword-nmt apply-bpe -c CODES`` (separator ``@@``), line by line."""

    def __init__(self, codes_path: Path):
        from subword_nmt.apply_bpe import BPE

        with open(codes_path, encoding="utf-8") as f:
            self._bpe = BPE(f)

    def __call__(self, lines: Iterable[str]) -> list[str]:
        return [self._bpe.process_line(line) for line in lines]


def remove_bpe(line: str) -> str:
    """What ``fairseq-generate --remove-bpe`` (``subword_nmt`` marker ``@@ ``) does to a hypothesis or reference."""
    return (line + " ").replace("@@ ", "").rstrip()


# ----------------------------------------------------------------------------------------------------------------------
# sentencepiece
# ----------------------------------------------------------------------------------------------------------------------


def train_spm(
    train_files: Sequence[Path],
    model_prefix: Path,
    vocab_size: int,
    model_type: str = "unigram",
    threads: int = 2,
    max_sentences: int | None = None,
) -> Path:
    """Train one (joined) sentencepiece model on all ``train_files``; returns ``<prefix>.model``.

    character_coverage 1.0 (German/English have small alphabets), no BOS/EOS pieces (fairseq adds its own), and a
    soft vocabulary limit so that a small corpus gives a smaller vocabulary instead of an error. ``max_sentences``:
    train on a random sample of that many lines (sentencepiece's input_sentence_size) for very large corpora.
    """
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=",".join(str(p) for p in train_files),
            model_prefix=str(model_prefix),
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            bos_id=-1,
            eos_id=-1,
            hard_vocab_limit=False,
            num_threads=threads,
            minloglevel=2,
            **({"input_sentence_size": max_sentences, "shuffle_input_sentence": True} if max_sentences else {}),
        )
    except (RuntimeError, OSError) as e:
        raise DataPrepError(f"sentencepiece training failed (--spm-size {vocab_size}): {e}") from e
    return Path(f"{model_prefix}.model")


class SPMEncoder:
    """Encode lines into space-separated sentencepiece pieces (what fairseq's ``--remove-bpe sentencepiece`` undoes)."""

    def __init__(self, model_path: Path):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(model_path))

    def __call__(self, lines: Sequence[str]) -> list[str]:
        return [" ".join(pieces) for pieces in self._sp.encode(list(lines), out_type=str)]


def remove_spm(line: str) -> str:
    """fairseq's ``--remove-bpe sentencepiece``: drop the spaces, turn ``\u2581`` back into spaces."""
    return line.replace(" ", "").replace("\u2581", " ").strip()
