#!/usr/bin/env python3
"""Evaluate a fairseq translation checkpoint: fairseq-generate, tokenized BLEU (fairseq's scorer) and sacreBLEU/chrF.

    python scripts/evaluate.py --data-bin DIR --checkpoint PATH_OR_DIR [--average-last N] [--subset test]
        [--beam 5] [--lenpen 1.0] [--max-tokens 8000] [--batch-size N] [--cpu] [--out JSON]

Steps:
1. Checkpoint: ``--checkpoint`` is a file, or a save dir (then ``checkpoint_best.pt`` if present, else
   ``checkpoint_last.pt``). With ``--average-last N`` (save dir only) the last N numbered checkpoints
   (``checkpoint{epoch}.pt``, or ``checkpoint_{epoch}_{update}.pt`` when there are no epoch checkpoints or with
   ``--average-by update``) are averaged by scripts/average_checkpoints.py into ``<save dir>/checkpoint.avgN.pt``
   (model parameters only: no optimizer state).
2. ``fairseq-generate`` (``python -m fairseq_cli.generate``, a subprocess) with ``--user-dir fairseq_plugins``, the
   given beam, length penalty, batch size and ``--remove-bpe`` value; its full output is kept.
3. Tokenized BLEU with fairseq's own scorer (``fairseq.scoring.bleu``, the code of ``fairseq-score``) on the H- lines
   against the tokenised reference (``ref/{subset}.tok.{tgt}`` of a BPE preparation; else the T- lines). For WMT'16
   (``prep.json`` dataset ``wmt16``) both sides are compound-split first as fairseq's
   ``scripts/compound_split_bleu.sh`` does (examples/scaling_nmt/README.md): every ``-`` between two non-space
   characters becomes `` ##AT##-##AT## ``. IWSLT'14/Multi30k BPE preparations are lowercased and Moses-tokenised, so
   this is the usual lowercased tokenized BLEU. For sentencepiece preparations there is no tokenised reference: the
   H-/T- lines are detokenised text split at spaces (fairseq-generate's own BLEU); report sacreBLEU for them.
4. sacreBLEU (BLEU and chrF, default settings, 13a tokenisation) on the detokenised hypotheses against
   ``ref/{subset}.{tgt}``: BPE preparations are Moses-detokenised (sacremoses, the target language), sentencepiece
   output is already detokenised by ``--remove-bpe sentencepiece``. Lowercased preparations (IWSLT'14 and Multi30k
   with BPE, whose references are lowercased) are scored with sacreBLEU's lowercase option (``case:lc`` in the
   signatures, ``sacrebleu_lowercase: true`` in the JSON).
5. A JSON file (default ``<checkpoint dir>/eval.<subset>.json``; written atomically) and, next to it,
   ``<stem>.generate.txt`` (fairseq-generate's output), ``<stem>.hyp.<tgt>`` (detokenised hypotheses, source order),
   ``<stem>.tok.hyp.<tgt>``/``<stem>.tok.ref.<tgt>`` (what the tokenized BLEU scored) and, when the sacreBLEU
   reference comes from T- lines, ``<stem>.ref.<tgt>``. An existing JSON made with other settings (checkpoint files,
   ``--average-last``, beam, length penalty, subset, references, ``--remove-bpe`` ...; its ``options``) is not
   replaced: the run stops with an error that names the differences, before anything is written; give another
   ``--out``, or ``--overwrite``. The same settings again (e.g. after more training) replace it.

Hypotheses that still contain subword markers (``@@`` of BPE, ``▁`` of sentencepiece: a missing or wrong
``--remove-bpe``) are scored as they are, with a warning on stderr that gives their fraction and the remedy; the JSON
records it (``subword_markers``).

Data-bins without ``prep.json`` (any fairseq data-bin): the languages are taken from ``--source-lang/--target-lang``
or from the ``{subset}.{src}-{tgt}.*.idx`` file names; ``--remove-bpe`` (fairseq's values; none by default),
``--ref FILE`` (the detokenised reference for sacreBLEU; default: the T- lines, detokenised like the hypotheses),
``--tok-ref FILE`` (default: the T- lines), ``--detok moses|none``, ``--lowercase`` and ``--bleu-tok-kind`` say the
rest. These options also override what ``prep.json`` says.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "fairseq_plugins"
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # data_prep (also installed with the project)


def _average_module():
    """scripts/average_checkpoints.py (scripts/ is not a package; loaded by path, sys.path stays as it is)."""
    name = "fairseq_sage_average_checkpoints"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().with_name("average_checkpoints.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_avg = _average_module()
AverageError, average_checkpoints, last_checkpoints, save_atomic = (
    _avg.AverageError, _avg.average_checkpoints, _avg.last_checkpoints, _avg.save_atomic
)  # fmt: skip

LOWERCASED_DATASETS = ("iwslt14", "multi30k")  # their BPE preparations lowercase the text (data_prep)
COMPOUND_SPLIT_DATASETS = ("wmt16",)
# fairseq scripts/compound_split_bleu.sh: perl -ple 's{(\S)-(\S)}{$1 ##AT##-##AT## $2}g' (Perl's \S on bytes: ASCII)
_COMPOUND = re.compile(r"(\S)-(\S)", re.ASCII)


class EvalError(Exception):
    """A user-facing error; the message names the path or option at fault."""


def compound_split(line: str) -> str:
    """fairseq's compound splitting for WMT En-De tokenized BLEU (``a-b`` -> ``a ##AT##-##AT## b``)."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------


def read_text_lines(path: Path) -> list[str]:
    """Lines as the ``sacrebleu`` command line reads them (text mode, UTF-8, each ``rstrip()``-ed)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip() for line in f]


def write_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_lines(path: Path, lines: list[str]) -> Path:
    return write_atomic(path, "".join(f"{line}\n" for line in lines))


# ----------------------------------------------------------------------------------------------------------------------
# Settings: prep.json and options
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    src: str
    tgt: str
    remove_bpe: str | None
    dataset: str | None
    segmentation: str | None
    lowercase: bool
    detok: str  # "moses" or "none"
    bleu_tok_kind: str  # "tokenized" or "compound_split"
    ref: Path | None  # detokenised reference for sacreBLEU (None: T- lines)
    tok_ref: Path | None  # tokenised reference (None: T- lines)
    prep: dict | None


def infer_langs(data_bin: Path, subset: str) -> tuple[str, str]:
    pairs = set()
    for path in data_bin.glob(f"{subset}.*-*.*.idx"):
        m = re.fullmatch(rf"{re.escape(subset)}\.([^.-]+)-([^.-]+)\.([^.]+)\.idx", path.name)
        if m and m.group(3) in (m.group(1), m.group(2)):
            pairs.add((m.group(1), m.group(2)))
    if len(pairs) != 1:
        found = ", ".join(f"{s}-{t}" for s, t in sorted(pairs)) or "none"
        raise EvalError(
            f"{data_bin} has no prep.json and the language pair of {subset!r} is not unique (found: {found}); "
            "give --source-lang and --target-lang"
        )
    return next(iter(pairs))


def resolve_setup(args) -> Setup:
    data_bin = args.data_bin
    prep = None
    prep_path = data_bin / "prep.json"
    if prep_path.is_file():
        try:
            prep = json.loads(prep_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EvalError(f"cannot read {prep_path}: {e}") from e
    if prep is not None:
        settings = prep.get("settings", {})
        src = args.source_lang or prep.get("source_lang")
        tgt = args.target_lang or prep.get("target_lang")
        if not src or not tgt:
            raise EvalError(f"{prep_path} names no source_lang/target_lang; give --source-lang and --target-lang")
        dataset = settings.get("dataset")
        segmentation = prep.get("segmentation") or settings.get("segmentation")
        remove_bpe = args.remove_bpe if args.remove_bpe is not None else prep.get("remove_bpe")
        lowercase = segmentation == "bpe" and dataset in LOWERCASED_DATASETS
        ref = data_bin / "ref" / f"{args.subset}.{tgt}"
        tok = data_bin / "ref" / f"{args.subset}.tok.{tgt}"
        tok_ref = tok if tok.is_file() else None
        kind = "compound_split" if dataset in COMPOUND_SPLIT_DATASETS else "tokenized"
    else:
        if args.source_lang and args.target_lang:
            src, tgt = args.source_lang, args.target_lang
        else:
            src, tgt = infer_langs(data_bin, args.subset)
            src, tgt = args.source_lang or src, args.target_lang or tgt
        dataset = segmentation = None
        remove_bpe = args.remove_bpe
        lowercase = False
        ref = tok_ref = None
        kind = "tokenized"
    if args.ref is not None:
        ref = args.ref
    if args.tok_ref is not None:
        tok_ref = args.tok_ref
    if args.lowercase is not None:
        lowercase = args.lowercase
    if args.bleu_tok_kind is not None:
        kind = args.bleu_tok_kind
    if remove_bpe in ("none", ""):
        remove_bpe = None
    detok = args.detok or ("moses" if remove_bpe in ("subword_nmt", "@@ ", "@@") else "none")
    return Setup(src, tgt, remove_bpe, dataset, segmentation, lowercase, detok, kind, ref, tok_ref, prep)


def check_data_bin(data_bin: Path, setup: Setup, subset: str) -> None:
    for lang in (setup.src, setup.tgt):
        d = data_bin / f"dict.{lang}.txt"
        if not d.is_file():
            raise EvalError(f"{data_bin} is not a fairseq data-bin for {setup.src}-{setup.tgt}: {d} does not exist")
    idx = data_bin / f"{subset}.{setup.src}-{setup.tgt}.{setup.tgt}.idx"
    if not idx.is_file():
        raise EvalError(f"{data_bin} has no binarised {subset!r} split for {setup.src}-{setup.tgt}: {idx} is missing")
    for what, path in (("sacreBLEU reference", setup.ref), ("tokenised reference", setup.tok_ref)):
        if path is not None and not Path(path).is_file():
            raise EvalError(f"the {what} {path} does not exist")


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def resolve_checkpoints(path: Path, average_last: int | None, average_by: str) -> tuple[Path, list[Path]]:
    """(the file to give fairseq-generate, the checkpoints it stands for). Writes nothing: an average of several
    checkpoints is named here and written by average()."""
    if not path.exists():
        raise EvalError(f"checkpoint {path} does not exist")
    if average_last is not None:
        if not path.is_dir():
            raise EvalError(f"--average-last needs a save dir as --checkpoint, got the file {path}")
        try:
            paths = last_checkpoints(path, average_last, average_by)
        except AverageError as e:
            raise EvalError(str(e)) from e
        if len(paths) == 1:
            return paths[0], paths
        return path / f"checkpoint.avg{average_last}.pt", paths
    if path.is_dir():
        for name in ("checkpoint_best.pt", "checkpoint_last.pt"):
            if (path / name).is_file():
                return path / name, [path / name]
        present = ", ".join(sorted(p.name for p in path.glob("*.pt"))) or "no .pt files"
        raise EvalError(f"{path} has neither checkpoint_best.pt nor checkpoint_last.pt ({present})")
    return path, [path]


def average(checkpoint: Path, paths: list[Path]) -> None:
    """Write the average of ``paths`` to ``checkpoint`` (resolve_checkpoints' name for it) when there are several."""
    if len(paths) > 1:
        print(f"evaluate: averaging {', '.join(p.name for p in paths)} -> {checkpoint}", flush=True)
        try:
            save_atomic(average_checkpoints(paths, drop_optimizer_state=True), checkpoint)
        except AverageError as e:
            raise EvalError(str(e)) from e


# ----------------------------------------------------------------------------------------------------------------------
# The settings a result was made with, and an existing result file
# ----------------------------------------------------------------------------------------------------------------------

# key in the JSON (and its "options") -> the option that sets it
OPTION_FLAGS = {
    "data_bin": "--data-bin", "checkpoints": "--checkpoint (the checkpoint files)", "average_last": "--average-last",
    "subset": "--subset", "beam": "--beam", "lenpen": "--lenpen", "source_lang": "--source-lang",
    "target_lang": "--target-lang", "remove_bpe": "--remove-bpe", "detokenizer": "--detok",
    "sacrebleu_lowercase": "--lowercase", "bleu_tok_kind": "--bleu-tok-kind", "reference": "--ref",
    "tokenized_reference": "--tok-ref",
}  # fmt: skip


def result_options(args, setup: Setup, used: list[Path]) -> dict:
    """What a result depends on (not the batching: --max-tokens and --batch-size only group the sentences)."""
    return {
        "data_bin": str(args.data_bin.resolve()),
        "checkpoints": [str(p.resolve()) for p in used],
        "average_last": args.average_last,
        "subset": args.subset,
        "beam": args.beam,
        "lenpen": args.lenpen,
        "source_lang": setup.src,
        "target_lang": setup.tgt,
        "remove_bpe": setup.remove_bpe,
        "detokenizer": setup.detok,
        "sacrebleu_lowercase": setup.lowercase,
        "bleu_tok_kind": setup.bleu_tok_kind,
        "reference": str(Path(setup.ref).resolve()) if setup.ref is not None else None,
        "tokenized_reference": str(Path(setup.tok_ref).resolve()) if setup.tok_ref is not None else None,
    }


def check_overwrite(out: Path, options: dict) -> None:
    """Refuse to replace a result made with other settings (compared on the keys both record; results written
    before ``options`` existed are compared on their top-level keys of the same names)."""
    if not out.exists():
        return
    try:
        previous = json.loads(out.read_text(encoding="utf-8"))
        recorded = previous.get("options") or {k: previous[k] for k in OPTION_FLAGS if k in previous}
    except (OSError, ValueError, AttributeError) as e:
        raise EvalError(
            f"--out {out} exists and is not a result of this script ({type(e).__name__}: {e}); "
            "give another --out, or --overwrite to replace it"
        ) from None
    differences = [
        f"{OPTION_FLAGS[key]}: {recorded[key]!r} there, {options[key]!r} now"
        for key in OPTION_FLAGS
        if key in recorded and key in options and recorded[key] != options[key]
    ]
    if differences:
        raise EvalError(
            f"{out} holds a result made with other settings ({'; '.join(differences)}): not replaced; "
            "give another --out to keep both, or --overwrite to replace it"
        )


_BPE_MARKER = re.compile(r"@@(?= |$)")
SPM_MARKER = "\u2581"


def subword_markers(hyps: list[str], remove_bpe: str | None) -> dict:
    """How many hypotheses still contain subword markers, and (if any do) the warning to print."""
    bpe = sum(1 for h in hyps if _BPE_MARKER.search(h))
    spm = sum(1 for h in hyps if SPM_MARKER in h)
    count = sum(1 for h in hyps if _BPE_MARKER.search(h) or SPM_MARKER in h)
    record = {"count": count, "fraction": count / len(hyps) if hyps else 0.0, "bpe": bpe, "sentencepiece": spm}
    if count:
        value = "sentencepiece" if spm > bpe else "subword_nmt"
        record["warning"] = (
            f"{count} of {len(hyps)} hypotheses ({100 * record['fraction']:.1f} %) still contain subword markers "
            f"('@@' of BPE in {bpe}, '{SPM_MARKER}' of sentencepiece in {spm}) and are scored with them, so the "
            f"scores are not those of the text; fairseq-generate ran with --remove-bpe {remove_bpe or 'none'}: "
            f"pass --remove-bpe {value} (or fix remove_bpe in the data-bin's prep.json)"
        )
    return record


# ----------------------------------------------------------------------------------------------------------------------
# fairseq-generate and its output
# ----------------------------------------------------------------------------------------------------------------------


def generate_command(args, setup: Setup, checkpoint: Path, results_dir: Path) -> list[str]:
    cmd = [
        sys.executable, "-m", "fairseq_cli.generate", str(args.data_bin), "--path", str(checkpoint),
        "--user-dir", str(PLUGIN_DIR), "--task", "translation", "--source-lang", setup.src, "--target-lang", setup.tgt,
        "--gen-subset", args.subset, "--beam", str(args.beam), "--lenpen", str(args.lenpen), "--nbest", "1",
        "--max-tokens", str(args.max_tokens), "--results-path", str(results_dir), "--no-progress-bar",
    ]  # fmt: skip
    if args.batch_size is not None:
        cmd += ["--batch-size", str(args.batch_size)]
    if args.cpu:
        cmd.append("--cpu")
    if setup.remove_bpe is not None:
        cmd += ["--remove-bpe", setup.remove_bpe]
    return cmd


def parse_generate(path: Path) -> tuple[list[str], list[str], str | None]:
    """(hypotheses, targets) in source order from fairseq-generate's H-/T- lines, and its final BLEU line."""
    hyps: dict[int, str] = {}
    tgts: dict[int, str] = {}
    bleu_line = None
    with open(path, encoding="utf-8", newline="\n") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("H-"):
                sid, _score, text = line[2:].split("\t", 2)
                hyps.setdefault(int(sid), text)
            elif line.startswith("T-"):
                sid, text = line[2:].split("\t", 1)
                tgts[int(sid)] = text
            elif line.startswith("Generate "):
                bleu_line = line
    n = len(hyps)
    if n == 0:
        raise EvalError(f"fairseq-generate wrote no hypotheses ({path})")
    if set(hyps) != set(range(n)) or (tgts and set(tgts) != set(range(n))):
        raise EvalError(f"{path}: the H-/T- line ids are not 0..{n - 1}")
    return [hyps[i] for i in range(n)], [tgts.get(i, "") for i in range(n)], bleu_line


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------


def fairseq_bleu(hyps: list[str], refs: list[str]) -> dict:
    """Corpus BLEU exactly as ``fairseq-score --sys HYP --ref REF`` computes it (fairseq's C scorer, order 4)."""
    from fairseq.data import dictionary
    from fairseq.scoring import bleu

    d = dictionary.Dictionary()
    scorer = bleu.Scorer(bleu.BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
    for h, r in zip(hyps, refs, strict=True):
        sys_tok = d.encode_line(h)
        ref_tok = d.encode_line(r)
        scorer.add(ref_tok, sys_tok)
    syslen, reflen = int(scorer.stat.predlen), int(scorer.stat.reflen)
    if syslen == 0 or reflen == 0:
        return {"score": 0.0, "string": f"BLEU4 = 0.00 (syslen={syslen}, reflen={reflen})", "bp": 0.0,
                "sys_len": syslen, "ref_len": reflen}  # fmt: skip
    return {"score": scorer.score(4), "string": scorer.result_string(4), "bp": scorer.brevity(),
            "sys_len": syslen, "ref_len": reflen}  # fmt: skip


def sacrebleu_scores(hyps: list[str], refs: list[str], lowercase: bool) -> dict:
    """sacreBLEU BLEU and chrF (default settings), as ``sacrebleu REF -i HYP -m bleu chrf [-lc --chrf-lowercase]``."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(lowercase=lowercase), CHRF(lowercase=lowercase)
    b = bleu.corpus_score(hyps, [refs])
    c = chrf.corpus_score(hyps, [refs])
    bleu_sig, chrf_sig = bleu.get_signature().format(), chrf.get_signature().format()
    return {
        "sacrebleu": b.score, "sacrebleu_signature": bleu_sig, "sacrebleu_string": b.format(signature=bleu_sig),
        "bp": b.bp, "sys_len": b.sys_len, "ref_len": b.ref_len, "precisions": list(b.precisions),
        "chrf": c.score, "chrf_signature": chrf_sig,
    }  # fmt: skip


def detokenize(lines: list[str], how: str, lang: str) -> list[str]:
    if how == "none":
        return list(lines)
    if how == "moses":
        from data_prep.text import moses_detokenize

        return moses_detokenize(lines, lang)
    raise EvalError(f"unknown --detok {how!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="evaluate", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )  # fmt: skip
    p.add_argument("--data-bin", type=Path, required=True, help="fairseq data-bin (a data_prep folder or any)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or save dir")
    p.add_argument("--average-last", type=int, help="average the last N numbered checkpoints of the save dir")
    p.add_argument("--average-by", choices=("auto", "epoch", "update"), default="auto",
                   help="checkpoints for --average-last (auto: epoch ones if any, else update ones)")  # fmt: skip
    p.add_argument("--subset", default="test", help="split to translate (default test)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5; WMT'16 recipe: 4)")
    p.add_argument("--lenpen", type=float, default=1.0, help="length penalty (default 1.0; WMT'16 recipe: 0.6)")
    p.add_argument("--max-tokens", type=int, default=8000, help="tokens per batch (default 8000)")
    p.add_argument("--batch-size", type=int, help="sentences per batch (fairseq-generate --batch-size)")
    p.add_argument("--cpu", action="store_true", help="generate on the CPU")
    p.add_argument("--out", type=Path, help="JSON output (default <checkpoint dir>/eval.<subset>.json)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out result even if it was made with other settings")  # fmt: skip
    g = p.add_argument_group("data-bins without prep.json (these also override prep.json)")
    g.add_argument("--source-lang", help="source language (default: prep.json, or the data-bin's file names)")
    g.add_argument("--target-lang", help="target language (default: prep.json, or the data-bin's file names)")
    g.add_argument("--remove-bpe", nargs="?", const="subword_nmt",
                   help="fairseq-generate --remove-bpe value (subword_nmt, sentencepiece ...; 'none')")  # fmt: skip
    g.add_argument("--ref", type=Path, help="detokenised reference for sacreBLEU (default: ref/<subset>.<tgt>)")
    g.add_argument("--tok-ref", type=Path, help="tokenised reference for tokenized BLEU (default: ref/ or T- lines)")
    g.add_argument("--detok", choices=("moses", "none"),
                   help="detokeniser for sacreBLEU (default: moses after subword_nmt BPE, else none)")  # fmt: skip
    g.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="sacreBLEU/chrF lowercase option (default: on for lowercased preparations)")  # fmt: skip
    g.add_argument("--bleu-tok-kind", choices=("tokenized", "compound_split"),
                   help="tokenized BLEU variant (default: compound_split for WMT'16, else tokenized)")  # fmt: skip
    args = p.parse_args(argv)
    # fairseq-generate runs from the repository root: make the user's relative paths absolute first
    for name in ("data_bin", "checkpoint", "out", "ref", "tok_ref"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(getattr(args, name)).absolute())
    for name in ("beam", "max_tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    return args


def evaluate(args) -> dict:
    start = time.time()
    if not args.data_bin.is_dir():
        raise EvalError(f"--data-bin {args.data_bin} is not a folder")
    setup = resolve_setup(args)
    check_data_bin(args.data_bin, setup, args.subset)
    checkpoint, used = resolve_checkpoints(args.checkpoint, args.average_last, args.average_by)
    ckpt_dir = args.checkpoint if args.checkpoint.is_dir() else args.checkpoint.parent
    out = args.out if args.out is not None else ckpt_dir / f"eval.{args.subset}.json"
    options = result_options(args, setup, used)
    if not args.overwrite:
        check_overwrite(out, options)
    average(checkpoint, used)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    files = {
        "generate": Path(f"{stem}.generate.txt"),
        "hyp": Path(f"{stem}.hyp.{setup.tgt}"),
        "tok_hyp": Path(f"{stem}.tok.hyp.{setup.tgt}"),
        "tok_ref": Path(f"{stem}.tok.ref.{setup.tgt}"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as results_dir:
        cmd = generate_command(args, setup, checkpoint, Path(results_dir))
        print("evaluate: " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        produced = Path(results_dir) / f"generate-{args.subset}.txt"
        if proc.returncode != 0 or not produced.is_file():
            raise EvalError(f"fairseq-generate failed (exit status {proc.returncode}); its output is above")
        shutil.move(produced, files["generate"])
    hyps_tok, targets, generate_bleu = parse_generate(files["generate"])
    n = len(hyps_tok)
    markers = subword_markers(hyps_tok, setup.remove_bpe)
    if markers.get("warning"):
        print(f"evaluate: WARNING: {markers['warning']}", file=sys.stderr, flush=True)

    # tokenized BLEU (fairseq's scorer)
    if setup.tok_ref is not None:
        refs_tok, tok_ref_source = read_text_lines(setup.tok_ref), str(setup.tok_ref)
        if len(refs_tok) != n:
            raise EvalError(f"the tokenised reference {setup.tok_ref} has {len(refs_tok)} lines, {args.subset} has {n}")
    else:
        refs_tok, tok_ref_source = targets, "T- lines of fairseq-generate"
    sys_tok = list(hyps_tok)
    if setup.bleu_tok_kind == "compound_split":
        sys_tok, refs_tok = [compound_split(x) for x in sys_tok], [compound_split(x) for x in refs_tok]
    write_lines(files["tok_hyp"], sys_tok)
    write_lines(files["tok_ref"], refs_tok)
    tok = fairseq_bleu(read_text_lines(files["tok_hyp"]), read_text_lines(files["tok_ref"]))

    # sacreBLEU / chrF on detokenised text
    write_lines(files["hyp"], detokenize(hyps_tok, setup.detok, setup.tgt))
    if setup.ref is not None:
        ref_path, ref_source = Path(setup.ref), str(setup.ref)
    else:
        files["ref"] = ref_path = Path(f"{stem}.ref.{setup.tgt}")
        write_lines(ref_path, detokenize(targets, setup.detok, setup.tgt))
        ref_source = f"T- lines of fairseq-generate, detokenised ({setup.detok}): {ref_path}"
    hyps, refs = read_text_lines(files["hyp"]), read_text_lines(ref_path)
    if len(refs) != n:
        raise EvalError(f"the reference {ref_path} has {len(refs)} lines, but {args.subset} has {n} sentences")
    sb = sacrebleu_scores(hyps, refs, setup.lowercase)

    result = {
        "subset": args.subset,
        "n_sentences": n,
        "data_bin": str(args.data_bin.resolve()),
        "dataset": setup.dataset,
        "source_lang": setup.src,
        "target_lang": setup.tgt,
        "checkpoints": [str(p.resolve()) for p in used],
        "checkpoint": str(checkpoint.resolve()),
        "average_last": args.average_last,
        "beam": args.beam,
        "lenpen": args.lenpen,
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "remove_bpe": setup.remove_bpe,
        "bleu_tok": tok["score"],
        "bleu_tok_kind": setup.bleu_tok_kind,
        "bleu_tok_string": tok["string"],
        "bleu_tok_bp": tok["bp"],
        "bleu_tok_sys_len": tok["sys_len"],
        "bleu_tok_ref_len": tok["ref_len"],
        "bleu_tok_reference": tok_ref_source,
        **sb,
        "sacrebleu_lowercase": setup.lowercase,
        "sacrebleu_reference": ref_source,
        "detokenizer": setup.detok,
        "note": (
            "bleu_tok: fairseq's scorer (fairseq-score) on tokenized_hypotheses vs tokenized_references"
            + (
                " after compound splitting (fairseq scripts/compound_split_bleu.sh)"
                if setup.bleu_tok_kind == "compound_split"
                else ""
            )
            + "; sacrebleu/chrf/bp/sys_len/ref_len: sacreBLEU on hypotheses vs sacrebleu_reference"
            + (", lowercased (lowercased preparation)" if setup.lowercase else "")
            + (
                "; sentencepiece: bleu_tok splits the detokenised text at spaces (fairseq-generate's own BLEU), "
                "not comparable with published tokenized BLEU: report sacreBLEU"
                if setup.remove_bpe == "sentencepiece"
                else ""
            )
        ),  # fmt: skip
        "fairseq_generate_bleu": generate_bleu,
        "hypotheses": str(files["hyp"].resolve()),
        "tokenized_hypotheses": str(files["tok_hyp"].resolve()),
        "tokenized_references": str(files["tok_ref"].resolve()),
        "generate_output": str(files["generate"].resolve()),
        "generate_command": cmd,
        "subword_markers": markers,
        "options": options,
        "elapsed_s": round(time.time() - start, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if "ref" in files:
        result["references"] = str(files["ref"].resolve())
    write_atomic(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    result["json"] = str(out)
    return result


def _terminated(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: fairseq-generate is killed, temporary files are removed


def main(argv=None) -> int:
    args = parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        r = evaluate(args)
    except EvalError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("evaluate: interrupted (the JSON result is written whole at the end, or not at all)", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    kind = "compound-split" if r["bleu_tok_kind"] == "compound_split" else "tokenized"
    print(
        f"evaluate: {r['subset']} ({r['n_sentences']} sentences), {len(r['checkpoints'])} checkpoint(s): "
        f"BLEU ({kind}) {r['bleu_tok']:.2f} | sacreBLEU {r['sacrebleu']:.2f} ({r['sacrebleu_signature']}) | "
        f"chrF {r['chrf']:.2f} -> {r['json']}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
