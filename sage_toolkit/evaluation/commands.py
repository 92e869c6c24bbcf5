"""The command lines of the evaluation: ``scripts/evaluate.py`` (:func:`evaluate_main`) and
``scripts/average_checkpoints.py`` (:func:`average_checkpoints_main`): argument parsing, the options objects, one
library call, the printed summary.

    python scripts/evaluate.py --data-bin DIR --checkpoint PATH_OR_DIR [--average-last N] [--subset test]
        [--beam 5] [--lenpen 1.0] [--max-tokens 8000] [--batch-size N] [--cpu] [--out JSON]
    python scripts/average_checkpoints.py --inputs SAVE_DIR --num-epoch-checkpoints 5 --output avg.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_toolkit.errors import run_command
from sage_toolkit.evaluation import checkpoints, dataset
from sage_toolkit.evaluation import evaluate as evaluation
from sage_toolkit.evaluation.checkpoints import AVERAGE_KINDS, AverageOptions, average_to_file
from sage_toolkit.evaluation.dataset import ScoringOverrides
from sage_toolkit.evaluation.options import EvalOptions
from sage_toolkit.evaluation.scoring import BLEU_TOK_KINDS, DETOKENIZERS

EVALUATE_DESCRIPTION = (
    "Evaluate a fairseq translation checkpoint: fairseq-generate, tokenized BLEU (fairseq's scorer) and sacreBLEU/chrF."
)
AVERAGE_PROG = "average_checkpoints"
AVERAGE_DESCRIPTION = (
    "Average the model parameters of several fairseq checkpoints (checkpoint averaging, as in fairseq's\n"
    "``scripts/average_checkpoints.py``, which is not installed with the fairseq package)."
)
AVERAGE_USAGE = """Usage::

    python scripts/average_checkpoints.py --inputs SAVE_DIR --num-epoch-checkpoints 5 --output avg.pt
    python scripts/average_checkpoints.py --inputs SAVE_DIR --num-update-checkpoints 5 --output avg.pt
    python scripts/average_checkpoints.py --inputs a.pt b.pt c.pt --output avg.pt

"""


def parse_evaluate_args(argv=None) -> EvalOptions:
    p = argparse.ArgumentParser(
        prog=evaluation.PROG, description=EVALUATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(evaluation.__doc__.split("\n\n")[1:] + dataset.__doc__.split("\n\n")[1:]),
    )  # fmt: skip
    p.add_argument("--data-bin", type=Path, required=True, help="fairseq data-bin (a data_prep folder or any)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or save dir")
    p.add_argument("--average-last", type=int, help="average the last N numbered checkpoints of the save dir")
    p.add_argument("--average-by", choices=AVERAGE_KINDS, default="auto",
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
    g.add_argument("--detok", choices=DETOKENIZERS,
                   help="detokeniser for sacreBLEU (default: moses after subword_nmt BPE, else none)")  # fmt: skip
    g.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="sacreBLEU/chrF lowercase option (default: prep.json's lowercased)")  # fmt: skip
    g.add_argument("--bleu-tok-kind", choices=BLEU_TOK_KINDS,
                   help="tokenized BLEU variant (default: prep.json's bleu_tok_kind, else tokenized)")  # fmt: skip
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


def parse_average_args(argv=None) -> AverageOptions:
    p = argparse.ArgumentParser(prog=AVERAGE_PROG, description=AVERAGE_DESCRIPTION,
                                epilog=AVERAGE_USAGE + checkpoints.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--inputs", nargs="+", required=True, type=Path, help="checkpoint files, or one save dir")
    p.add_argument("--output", required=True, type=Path, help="the averaged checkpoint (written atomically)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--num-epoch-checkpoints", type=int, help="average the last N checkpoint{epoch}.pt of the dir")
    g.add_argument("--num-update-checkpoints", type=int, help="average the last N checkpoint_{e}_{u}.pt of the dir")
    p.add_argument("--drop-optimizer-state", action="store_true", help="write last_optimizer_state=None")
    args = p.parse_args(argv)
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
