"""Check our BPE step against the real IWSLT'14 data that fairseq's prepare-iwslt14.sh produced.

Inputs (``--shared-dir``, default ../shared/data/iwslt14-de-en): ``bpe10k/code`` (the standard merge table),
``tok/{valid,test}.{de,en}`` (tokenised, lowercased) and ``bpe10k/{valid,test}.{de,en}`` (the files fairseq-preprocess
reads). Checks, per file:

1. our BPE application (``data_prep.text.BPEApplier``, the same code the preparation uses) with ``bpe10k/code`` on
   ``tok/X`` gives ``bpe10k/X`` byte for byte;
2. removing the BPE as ``fairseq-generate --remove-bpe`` does gives ``tok/X`` back byte for byte;
3. the random sample of the BPE'd train set made with this merge table (``train_samples/train_sample4200.bpe10k.*``,
   4,200 lines per language): removing the BPE and applying ours again gives each file back byte for byte. (The
   other sample, train_sample4600, comes from another commit of the source repository and was segmented with a
   different merge table: 99,707 German units where bpe10k/code gives 112,492; it is not a test of this table.)
4. (information only) our Moses detokenisation of ``tok/X`` against ``detok/X``: the agreement rate.

Exit status 0 when checks 1-3 pass for every file, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import text as T
from .common import DataPrepError, cli_main, find_file, read_lines, write_lines

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "iwslt14-de-en"


def _bytes(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def _first_diff(a: list[str], b: list[str]) -> str:
    for n, (x, y) in enumerate(zip(a, b, strict=False), start=1):
        if x != y:
            return f"first difference at line {n}: ours {x[:100]!r} vs reference {y[:100]!r}"
    return f"line counts differ: {len(a)} vs {len(b)}"


def check(shared_dir: Path, splits=("valid", "test"), langs=("de", "en"), detok: bool = True) -> dict:
    """Run the checks; returns ``{"files": {name: {...}}, "ok": bool}`` (see the module docstring)."""
    if not shared_dir.is_dir():
        raise DataPrepError(f"--shared-dir {shared_dir} is not a folder")
    results: dict = {"files": {}, "ok": True}
    with tempfile.TemporaryDirectory() as tmp:
        codes = Path(tmp) / "code"
        write_lines(codes, read_lines(find_file(shared_dir / "bpe10k", ["code"], "the BPE codes")))
        bpe = T.BPEApplier(codes)
    for split in splits:
        for lang in langs:
            name = f"{split}.{lang}"
            tok = read_lines(find_file(shared_dir / "tok", [name], f"tok/{name}"))
            ref = read_lines(find_file(shared_dir / "bpe10k", [name], f"bpe10k/{name}"))
            ours = bpe(tok)
            r = {"lines": len(tok), "bpe_identical": _bytes(ours) == _bytes(ref)}
            r["remove_bpe_identical"] = _bytes([T.remove_bpe(x) for x in ref]) == _bytes(tok)
            if not r["bpe_identical"]:
                r["bpe_diff"] = _first_diff(ours, ref)
            if not r["remove_bpe_identical"]:
                r["remove_bpe_diff"] = _first_diff([T.remove_bpe(x) for x in ref], tok)
            if detok and (shared_dir / "detok").is_dir():
                detok_ref = read_lines(find_file(shared_dir / "detok", [name], f"detok/{name}"))
                r["detok_agree"] = sum(a == b for a, b in zip(T.moses_detokenize(tok, lang), detok_ref, strict=False))
            results["ok"] &= r["bpe_identical"] and r["remove_bpe_identical"]
            results["files"][name] = r
    for lang in langs:
        folder, name = shared_dir / "train_samples", f"train_sample4200.bpe10k.{lang}"
        if not (folder / name).is_file() and not (folder / f"{name}.gz").is_file():
            continue
        path = find_file(folder, [name], f"train_samples/{name}")
        ref = read_lines(path)
        ours = bpe([T.remove_bpe(x) for x in ref])
        r = {"lines": len(ref), "bpe_identical": _bytes(ours) == _bytes(ref), "round_trip": True}
        if not r["bpe_identical"]:
            r["bpe_diff"] = _first_diff(ours, ref)
        results["ok"] &= r["bpe_identical"]
        results["files"][f"train_samples/{path.name.removesuffix('.gz')}"] = r
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="check_iwslt14_bpe", description=__doc__.split("\n\n")[0])
    p.add_argument("--shared-dir", type=Path, default=DEFAULT_DIR, help=f"default {DEFAULT_DIR}")
    p.add_argument("--no-detok", action="store_true", help="skip the (informational) detokenisation comparison")
    args = p.parse_args(argv)
    res = check(args.shared_dir, detok=not args.no_detok)
    for name, r in res["files"].items():
        if r.get("round_trip"):
            verdict = "IDENTICAL" if r["bpe_identical"] else "DIFFERENT"
            print(f"{name}: {r['lines']} lines; remove-bpe then apply-bpe with bpe10k/code == {name}: {verdict}")
            if "bpe_diff" in r:
                print(f"  bpe_diff: {r['bpe_diff']}")
            continue
        line = (
            f"{name}: {r['lines']} lines; apply-bpe with bpe10k/code == bpe10k/{name}: "
            f"{'IDENTICAL' if r['bpe_identical'] else 'DIFFERENT'}; remove-bpe == tok/{name}: "
            f"{'IDENTICAL' if r['remove_bpe_identical'] else 'DIFFERENT'}"
        )
        if "detok_agree" in r:
            line += f"; detokenised == detok/{name}: {r['detok_agree']}/{r['lines']} lines"
        print(line)
        for key in ("bpe_diff", "remove_bpe_diff"):
            if key in r:
                print(f"  {key}: {r[key]}")
    print("OK: byte-identical" if res["ok"] else "FAILED", file=sys.stdout if res["ok"] else sys.stderr)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(cli_main("check_iwslt14_bpe", main))
