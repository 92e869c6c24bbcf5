"""Two German-English domains with one vocabulary: Tatoeba (general) for a base model, Multi30k (in-domain) to adapt it.

The fine-tuning study (studies/finetune_de_en.yaml) trains a base model on the embedded Tatoeba corpus and fine-tunes
it on Multi30k. Both data-bins must share one segmentation and one dictionary, so this script prepares them together:

    <dest>/general/    Tatoeba: train (every pair whose source is not held out), valid, test (held-out sources;
                       the test set measures forgetting of the base domain)
    <dest>/indomain/   Multi30k: train (29,000), valid (1,014), test (test2016), test1 (test2017)
    each a complete data-bin of ``build.build`` (prep.json, ref/, text/), with the same ``code`` and dictionary.

Both corpora get Multi30k's own tokenisation (lowercase, normalise punctuation, Moses-tokenise; see multi30k.py), so
Multi30k is evaluated exactly as in the from-scratch studies (lowercased references). One joint BPE (10,000 merges by
default) is learned on the training text of both domains, both languages, and one joined fairseq dictionary is counted
from the segmented training text of both domains. The BPE and dictionary differ from data_prep.multi30k's (learned on
Multi30k alone), so test BLEU here is not directly comparable with the from-scratch studies'.

Tatoeba is split as data_prep.demo splits it (by normalised source sentence, ``--seed``), so no held-out Tatoeba source
occurs in its train. Multi30k comes from ``--multi30k-dir`` (a local copy, as data_prep.multi30k's ``--local-dir``) or
is downloaded from the dataset's repository.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from . import multi30k
from . import text as T
from .build import Split, build
from .common import DataPrepError, atomic_output, cli_main, read_manifest, write_lines, write_manifest
from .demo import CORPUS as TATOEBA_CORPUS
from .demo import LICENSE, read_tatoeba, split_pairs, to_splits

NAME = "tatoeba-multi30k"
SRC, TGT = "de", "en"
DOMAINS = ("general", "indomain")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="prepare_domain_adaptation", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=TATOEBA_CORPUS, help="Tatoeba deu.txt[.gz] (default: embedded)")
    p.add_argument("--multi30k-dir", type=Path, help="local Multi30k raw files (as data_prep.multi30k --local-dir)")
    p.add_argument("--download-dir", type=Path, default=Path("data-bin/downloads/multi30k"), help="download folder")
    p.add_argument("--valid-size", type=int, default=1000, help="Tatoeba valid sentences (default 1000)")
    p.add_argument("--test-size", type=int, default=1000, help="Tatoeba held-out test sentences (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="Tatoeba split seed (default 1, as data_prep.demo)")
    p.add_argument("--bpe-size", type=int, default=10000, help="joint BPE merge operations (default 10000)")
    p.add_argument("--tatoeba-train-size", type=int, help="use only the first N Tatoeba training pairs (tests)")
    p.add_argument("--multi30k-train-size", type=int, help="use only the first N Multi30k training pairs (tests)")
    p.add_argument("--workers", type=int, default=1, help="fairseq-preprocess worker processes (default 1)")
    p.add_argument(
        "--dest", type=Path, default=Path("data-bin/tatoeba_multi30k.de-en.bpe"),
        help="output folder: DEST/general and DEST/indomain (default data-bin/tatoeba_multi30k.de-en.bpe)",
    )  # fmt: skip
    return p.parse_args(argv)


def check_args(args) -> None:
    for opt in ("valid_size", "test_size", "bpe_size", "tatoeba_train_size", "multi30k_train_size", "workers"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise DataPrepError(f"--{opt.replace('_', '-')} must be positive, got {value}")


def tatoeba_splits(args) -> tuple[list[Split], dict]:
    pairs = read_tatoeba(args.corpus)
    parts = split_pairs(pairs, 1, args.valid_size, args.test_size, args.seed)  # index 1: the German side
    available = len(parts["train"])
    if args.tatoeba_train_size is not None:
        if args.tatoeba_train_size > available:
            raise DataPrepError(f"--tatoeba-train-size {args.tatoeba_train_size} is more than the {available} pairs")
        parts["train"] = parts["train"][: args.tatoeba_train_size]
    splits = to_splits(parts, SRC, TGT, args.corpus, multi30k.tokenize)
    info = {"corpus": str(args.corpus), "train_pairs_available": available, "corpus_pairs": len(pairs),
            "license": LICENSE}  # fmt: skip
    return splits, info


def multi30k_splits(args) -> tuple[list[Split], dict]:
    files = multi30k.locate(argparse.Namespace(local_dir=args.multi30k_dir, download_dir=args.download_dir,
                                               src=SRC, tgt=TGT))  # fmt: skip
    splits = multi30k.read_splits(files, SRC, TGT, args.multi30k_train_size, tokenized=True)
    return splits, {"sources": {k: str(v) for k, v in files.items()}}


def joint_vocabulary(trains: list[Split], bpe_size: int, work: Path, log=print) -> tuple[Path, Path]:
    """Learn one BPE on every training side of both domains, then count one joined dictionary of the segmented text
    (as fairseq-preprocess --joined-dictionary counts its train files: threshold 0, padding factor 8)."""
    lines = [line for sp in trains for lang in (SRC, TGT) for line in sp.tok[lang]]
    log(f"learning joint BPE ({bpe_size} merges) on {len(lines)} training lines of both domains and languages")
    codes = T.learn_bpe(lines, bpe_size, work / "code")
    segment = T.BPEApplier(codes)
    texts = []
    for sp in trains:
        for lang in (SRC, TGT):
            path = work / f"{len(texts)}.{lang}"
            write_lines(path, segment(sp.tok[lang]))
            texts.append(str(path))
    from fairseq.tasks.translation import TranslationTask

    dictionary = TranslationTask.build_dictionary(texts, workers=1, threshold=0, nwords=-1, padding_factor=8)
    dict_path = work / "dict.txt"
    dictionary.save(str(dict_path))
    log(f"joined dictionary: {len(dictionary)} symbols")
    return codes, dict_path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)
    dest = args.dest.absolute()
    settings = {
        "dataset": NAME, "src": SRC, "tgt": TGT, "segmentation": "bpe", "bpe_size": args.bpe_size,
        "valid_size": args.valid_size, "test_size": args.test_size, "seed": args.seed,
        "tatoeba_train_size": args.tatoeba_train_size, "multi30k_train_size": args.multi30k_train_size,
        "corpus": str(args.corpus.absolute()),
        "multi30k": str(args.multi30k_dir.absolute()) if args.multi30k_dir else multi30k.URL,
    }  # fmt: skip
    with atomic_output(dest, settings) as tmp:
        if tmp is None:
            return 0
        general, general_info = tatoeba_splits(args)
        indomain, indomain_info = multi30k_splits(args)
        work = tmp / "vocabulary"
        work.mkdir()
        codes, dict_path = joint_vocabulary([general[0], indomain[0]], args.bpe_size, work)
        shared = {"code": codes.name, "dictionary": "dict.de.txt (= dict.en.txt)", "code_sha256": sha256(codes),
                  "dictionary_sha256": sha256(dict_path)}  # fmt: skip
        for domain, splits, info in (("general", general, general_info), ("indomain", indomain, indomain_info)):
            build(
                tmp / domain, {**settings, "domain": domain}, SRC, TGT, splits, "bpe",
                lowercased=multi30k.LOWERCASED, bleu_tok_kind=multi30k.BLEU_TOK_KIND, joined_dictionary=True,
                preprocess_extra=["--srcdict", str(dict_path)], copy_files={"code": codes}, workers=args.workers,
                info={**info, "domain": domain, "joint_vocabulary": shared},
            )  # fmt: skip
            if sha256(tmp / domain / f"dict.{SRC}.txt") != shared["dictionary_sha256"]:
                raise DataPrepError(f"internal error: {domain}'s dictionary is not the joint one")
        for name in ("code", "dict.txt"):
            (work / name).rename(tmp / name)
        shutil.rmtree(work)  # the segmented training text the dictionary was counted from
        write_manifest(tmp, settings, {"domains": list(DOMAINS), **shared})
    return 0


def domain_dir(dest: Path, domain: str) -> Path:
    """The data-bin of one domain in a completed preparation (raises if ``dest`` is not one)."""
    if read_manifest(Path(dest)) is None:
        raise DataPrepError(f"{dest} is not a completed domain-adaptation preparation (no prep.json)")
    return Path(dest) / domain


if __name__ == "__main__":
    raise SystemExit(cli_main("prepare_domain_adaptation", main))
