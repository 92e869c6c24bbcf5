"""The command lines of the evaluation: ``scripts/evaluate.py`` (:func:`evaluate_main`) and
``scripts/average_checkpoints.py`` (:func:`average_checkpoints_main`): argument parsing, the options objects, one
library call, the printed summary.

    sage-evaluate --data-bin DIR --checkpoint PATH_OR_DIR [options]           (also python scripts/evaluate.py)
    sage-average-checkpoints --inputs SAVE_DIR --num-epoch-checkpoints 5 --output avg.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_toolkit.cli import command_parser
from sage_toolkit.errors import run_command
from sage_toolkit.evaluation import evaluate as evaluation
from sage_toolkit.evaluation.checkpoints import AVERAGE_KINDS, AverageOptions, average_to_file
from sage_toolkit.evaluation.dataset import ScoringOverrides
from sage_toolkit.evaluation.options import EvalOptions
from sage_toolkit.evaluation.scoring import BLEU_TOK_KINDS, DETOKENIZERS

EVALUATE_DESCRIPTION = (
    "Evaluate a fairseq translation checkpoint: fairseq-generate, tokenized BLEU (fairseq's scorer) and sacreBLEU/chrF "
    "on the detokenized output, into a JSON file next to the checkpoint. A data_prep folder carries what scoring needs "
    "(prep.json, ref/); for any other data-bin give --remove-bpe and --ref (docs/toolkit.md)."
)
EVALUATE_EXAMPLES = [
    "sage-evaluate --data-bin data-bin/iwslt14.tokenized.de-en --checkpoint checkpoints/iwslt14_de_en_sage",
    "sage-evaluate --data-bin data-bin/wmt16_en_de_bpe32k --checkpoint checkpoints/wmt16_en_de_big_sage "
    "--average-last 10 --beam 4 --lenpen 0.6",
    "sage-evaluate --data-bin data-bin/demo --checkpoint runs/demo/demo_sage/seed1 --subset valid --cpu",
]
AVERAGE_PROG = "sage-average-checkpoints"
AVERAGE_DESCRIPTION = (
    "Average the model parameters of several fairseq checkpoints of the same model (checkpoint averaging, as in "
    "fairseq's scripts/average_checkpoints.py, which is not installed with the fairseq package)."
)
AVERAGE_EXAMPLES = [
    "sage-average-checkpoints --inputs SAVE_DIR --num-epoch-checkpoints 5 --output avg.pt",
    "sage-average-checkpoints --inputs SAVE_DIR --num-update-checkpoints 5 --output avg.pt",
    "sage-average-checkpoints --inputs a.pt b.pt c.pt --output avg.pt",
]


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = command_parser(
        evaluation.PROG, EVALUATE_DESCRIPTION, "%(prog)s --data-bin DIR --checkpoint PATH [options]", EVALUATE_EXAMPLES
    )
    what = p.add_argument_group("what to translate")
    what.add_argument("--data-bin", type=Path, required=True, help="fairseq data-bin (a data_prep folder or any)")
    what.add_argument("--checkpoint", type=Path, required=True,
                      help="checkpoint file, or a save dir (checkpoint_best.pt, else checkpoint_last.pt)")  # fmt: skip
    what.add_argument("--average-last", type=int, metavar="N",
                      help="average the last N numbered checkpoints of the save dir")  # fmt: skip
    what.add_argument("--average-by", choices=AVERAGE_KINDS, default="auto",
                      help="checkpoints for --average-last (auto: epoch ones if any, else update ones)")  # fmt: skip
    what.add_argument("--subset", default="test", help="split to translate")
    decoding = p.add_argument_group("decoding")
    decoding.add_argument("--beam", type=int, default=5, help="beam size (WMT'16 recipe: 4)")
    decoding.add_argument("--lenpen", type=float, default=1.0, help="length penalty (WMT'16 recipe: 0.6)")
    decoding.add_argument("--max-tokens", type=int, default=8000, help="tokens per batch")
    decoding.add_argument("--batch-size", type=int, help="sentences per batch (fairseq-generate --batch-size)")
    decoding.add_argument("--cpu", action="store_true", help="generate on the CPU")
    output = p.add_argument_group("output")
    output.add_argument("--out", type=Path, help="JSON output (default: <checkpoint dir>/eval.<subset>.json)")
    output.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out result even if it was made with other settings")  # fmt: skip
    g = p.add_argument_group("data-bins without prep.json (these also override prep.json)")
    g.add_argument("--source-lang", help="source language (default: prep.json, or the data-bin's file names)")
    g.add_argument("--target-lang", help="target language (default: prep.json, or the data-bin's file names)")
    g.add_argument("--remove-bpe", nargs="?", const="subword_nmt",
                   help="fairseq-generate --remove-bpe value (subword_nmt, sentencepiece ...; 'none'; "
                   "default: prep.json's)")  # fmt: skip
    g.add_argument("--ref", type=Path, help="detokenised reference for sacreBLEU (default: ref/<subset>.<tgt>)")
    g.add_argument("--tok-ref", type=Path, help="tokenised reference for tokenized BLEU (default: ref/ or T- lines)")
    g.add_argument("--detok", choices=DETOKENIZERS,
                   help="detokeniser for sacreBLEU (default: moses after subword_nmt BPE, else none)")  # fmt: skip
    g.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="sacreBLEU/chrF lowercase option (default: prep.json's lowercased)")  # fmt: skip
    g.add_argument("--bleu-tok-kind", choices=BLEU_TOK_KINDS,
                   help="tokenized BLEU variant (default: prep.json's bleu_tok_kind, else tokenized)")  # fmt: skip
    return p


def parse_evaluate_args(argv=None) -> EvalOptions:
    p = build_evaluate_parser()
    args = p.parse_args(argv)
    for name in ("beam", "max_tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    overrides = ScoringOverrides(
        source_lang=args.source_lang, target_lang=args.target_lang, remove_bpe=args.remove_bpe, ref=args.ref,
        tok_ref=args.tok_ref, detok=args.detok, lowercase=args.lowercase, bleu_tok_kind=args.bleu_tok_kind,
    )  # fmt: skip
    return EvalOptions(
        data_bin=args.data_bin, checkpoint=args.checkpoint, average_last=args.average_last,
        average_by=args.average_by, subset=args.subset, beam=args.beam, lenpen=args.lenpen,
        max_tokens=args.max_tokens, batch_size=args.batch_size, cpu=args.cpu, out=args.out,
        overwrite=args.overwrite, overrides=overrides,
    )  # fmt: skip


def evaluate_main(argv=None) -> int:
    """``scripts/evaluate.py``: evaluate one checkpoint, print the summary line."""
    options = parse_evaluate_args(argv)
    interrupted = "interrupted (the JSON result is written whole at the end, or not at all)"
    result = run_command(evaluation.PROG, lambda: evaluation.evaluate(options), interrupted=interrupted)
    print(evaluation.summary_line(result), flush=True)
    return 0


def build_average_parser() -> argparse.ArgumentParser:
    p = command_parser(
        AVERAGE_PROG, AVERAGE_DESCRIPTION, "%(prog)s --inputs CHECKPOINTS_OR_DIR --output FILE [options]",
        AVERAGE_EXAMPLES,
    )  # fmt: skip
    io = p.add_argument_group("input and output")
    io.add_argument("--inputs", nargs="+", required=True, type=Path, help="checkpoint files, or one save dir")
    io.add_argument("--output", required=True, type=Path, help="the averaged checkpoint (written atomically)")
    io.add_argument("--drop-optimizer-state", action="store_true", help="write last_optimizer_state=None")
    which = p.add_argument_group("which checkpoints of a save dir (one of)")
    g = which.add_mutually_exclusive_group()
    g.add_argument("--num-epoch-checkpoints", type=int, metavar="N", help="average the last N checkpoint{epoch}.pt")
    g.add_argument("--num-update-checkpoints", type=int, metavar="N",
                   help="average the last N checkpoint_{epoch}_{updates}.pt")  # fmt: skip
    return p


def parse_average_args(argv=None) -> AverageOptions:
    args = build_average_parser().parse_args(argv)
    return AverageOptions(
        inputs=tuple(args.inputs), output=args.output, num_epoch_checkpoints=args.num_epoch_checkpoints,
        num_update_checkpoints=args.num_update_checkpoints, drop_optimizer_state=args.drop_optimizer_state,
    )  # fmt: skip


def average_checkpoints_main(argv=None) -> int:
    """``scripts/average_checkpoints.py``: average checkpoints into one file, say which."""
    options = parse_average_args(argv)
    paths = run_command(AVERAGE_PROG, lambda: average_to_file(options))
    print(f"averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) -> {options.output}")
    return 0


if __name__ == "__main__":  # python -m sage_toolkit.evaluation.commands: how the runners start it
    raise SystemExit(evaluate_main())
