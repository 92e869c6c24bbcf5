"""Compare our Multi30k tokenisation with the dataset's own ``tok/*.lc.norm.tok.*`` files.

``data_prep.multi30k.tokenize`` (lowercase, normalise punctuation, Moses-tokenise: the dataset's task1-tokenize.sh
with sacremoses in place of the Perl scripts) is applied to ``raw/{split}.{lang}`` and compared line by line with
``tok/{split}.lc.norm.tok.{lang}``. Prints the agreement per file and overall and the differing lines.

Known remaining difference: Multi30k's files were made with the Moses scripts of December 2017 (commit 3a0631a),
whose normalize-punctuation.perl turned a right single quote that is not between two letters into a double quote
(``\u2019em`` -> ``"em``); sacremoses follows the later Moses rule (an apostrophe). Exit status 1 when the overall
agreement is below ``--min-agreement``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import DataPrepError, cli_main, find_file, read_lines
from .multi30k import tokenize

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")


def compare(shared_dir: Path, splits=SPLITS, langs=("en", "de")) -> dict:
    """``{"files": {name: (agree, total, [(line_no, raw, ours, theirs), ...])}, "agree": n, "total": n}``."""
    if not shared_dir.is_dir():
        raise DataPrepError(f"--shared-dir {shared_dir} is not a folder")
    out: dict = {"files": {}, "agree": 0, "total": 0}
    for split in splits:
        for lang in langs:
            raw = read_lines(find_file(shared_dir / "raw", [f"{split}.{lang}"], f"raw/{split}.{lang}"))
            ref = read_lines(find_file(shared_dir / "tok", [f"{split}.lc.norm.tok.{lang}"], f"tok/{split}.{lang}"))
            if len(raw) != len(ref):
                raise DataPrepError(f"raw/{split}.{lang} has {len(raw)} lines but its tok/ file has {len(ref)}")
            ours = tokenize(raw, lang)
            diffs = [(n, r, a, b) for n, (r, a, b) in enumerate(zip(raw, ours, ref, strict=True), start=1) if a != b]
            out["files"][f"{split}.{lang}"] = (len(raw) - len(diffs), len(raw), diffs)
            out["agree"] += len(raw) - len(diffs)
            out["total"] += len(raw)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="check_multi30k_tok", description=__doc__.split("\n\n")[0])
    p.add_argument("--shared-dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    p.add_argument("--splits", nargs="+", default=list(SPLITS), help=f"default {' '.join(SPLITS)}")
    p.add_argument("--min-agreement", type=float, default=0.999, help="fail below this line agreement (0.999)")
    args = p.parse_args(argv)
    res = compare(args.shared_dir, args.splits)
    for name, (agree, total, diffs) in res["files"].items():
        print(f"{name}: {agree}/{total} lines identical ({100 * agree / total:.2f}%)")
        for n, raw, ours, theirs in diffs:
            print(f"  line {n}: raw    {raw!r}\n          ours   {ours!r}\n          theirs {theirs!r}")
    rate = res["agree"] / res["total"]
    print(f"overall: {res['agree']}/{res['total']} lines identical ({100 * rate:.3f}%)")
    return 0 if rate >= args.min_agreement else 1


if __name__ == "__main__":
    raise SystemExit(cli_main("check_multi30k_tok", main))
