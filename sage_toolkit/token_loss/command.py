"""The command line of ``sage-analyze-token-loss`` (also ``scripts/analyze_token_loss.py``): the parser, the options
(:class:`~.analysis.TokenLossOptions`), one library call (:func:`.analysis.run`), the table on stdout."""

from __future__ import annotations

import argparse

from sage_toolkit.cli import add_device_options, checkpoint_analysis_parser, require_positive
from sage_toolkit.errors import ToolkitError, run_command
from sage_toolkit.token_loss import analysis
from sage_toolkit.token_loss.analysis import DEFAULT_EDGES, DEFAULT_SUBSETS, TokenLossOptions

DESCRIPTION = (
    "The per-token NLL of trained fairseq translation checkpoints, split by how often each token occurs in the "
    "training data (and by the rarest source token of its sentence); with --multiplier-batches, the SAGE multiplier "
    "of the embedding rows in the same bands. token_loss.json in --out, the table on stdout."
)
EXAMPLES = [
    "sage-analyze-token-loss --data-bin data-bin/multi30k.de-en.bpe --checkpoints adam=runs/a sage=runs/s --out tl",
    "sage-analyze-token-loss --data-bin DATA --checkpoints adam=A.pt sage=S.pt --out tl --subsets valid train "
    "--max-sentences 3000",
    "sage-analyze-token-loss --data-bin DATA --checkpoints sage=runs/s/checkpoint_last.pt --out tl "
    "--multiplier-batches 20",
]


def build_parser() -> argparse.ArgumentParser:
    p = checkpoint_analysis_parser(
        analysis.PROG, DESCRIPTION, EXAMPLES, out_help="output folder (token_loss.json)",
        checkpoints_help="checkpoints to measure, the first the baseline of the differences (a file, or a save dir: "
        "checkpoint_best.pt, else checkpoint_last.pt)",
    )  # fmt: skip
    scoring = p.add_argument_group("what is scored")
    scoring.add_argument(
        "--subsets", nargs="+", default=list(DEFAULT_SUBSETS), help="splits to score, e.g. valid train"
    )
    scoring.add_argument(
        "--edges",
        type=int,
        nargs="+",
        default=list(DEFAULT_EDGES),
        help="band edges on a token's train count, increasing (10 100 1000: < 10, 10-99, 100-999, >= 1000)",
    )
    scoring.add_argument("--max-sentences", type=int, help="score only each split's first N sentences (default all)")
    add_device_options(scoring)
    multipliers = p.add_argument_group("SAGE's multipliers")
    multipliers.add_argument(
        "--multiplier-batches",
        type=int,
        default=0,
        help="for checkpoints trained with SAGE: measure the multiplier of the embedding rows on this many train "
        "batches (0: off)",
    )
    multipliers.add_argument("--seed", type=int, default=1, help="seed of those batches' order and dropout")
    return p


def parse_args(argv=None) -> TokenLossOptions:
    p = build_parser()
    args = p.parse_args(argv)
    require_positive(p, args, "max_tokens", "max_sentences")
    try:
        analysis.check_edges(tuple(args.edges))
    except ToolkitError as e:
        p.error(str(e))
    if args.multiplier_batches < 0:
        p.error(f"--multiplier-batches must be 0 or more, got {args.multiplier_batches}")
    if len(set(args.subsets)) != len(args.subsets):
        p.error(f"--subsets: a split is given twice: {' '.join(args.subsets)}")
    return TokenLossOptions(
        data_bin=args.data_bin, checkpoints=tuple(args.checkpoints), out=args.out, subsets=tuple(args.subsets),
        edges=tuple(args.edges), max_sentences=args.max_sentences, max_tokens=args.max_tokens, cpu=args.cpu,
        multiplier_batches=args.multiplier_batches, seed=args.seed,
    )  # fmt: skip


def main(argv=None) -> int:
    """``scripts/analyze_token_loss.py``: measure, print the table and what was written."""
    options = parse_args(argv)
    result = run_command(analysis.PROG, lambda: analysis.run(options))
    print(analysis.table(result))
    print(f"{analysis.PROG}: wrote {options.out / analysis.OUTPUT}")
    return 0


if __name__ == "__main__":  # python -m sage_toolkit.token_loss.command: how the runners start it
    raise SystemExit(main())
