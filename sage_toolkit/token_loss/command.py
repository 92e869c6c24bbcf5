"""The command line of the token-loss analysis, ``scripts/analyze_token_loss.py`` (:func:`main`): argument parsing,
:class:`~.analysis.TokenLossOptions`, one library call (:func:`.analysis.run`), the table on stdout.

    python scripts/analyze_token_loss.py --data-bin DIR --checkpoints NAME=PATH [NAME=PATH ...] --out DIR
        [--subsets valid [train ...]] [--edges 10 100 1000] [--max-sentences N] [--max-tokens 4096]
        [--multiplier-batches N] [--seed 1] [--cpu]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_toolkit.errors import ToolkitError, run_command
from sage_toolkit.token_loss import analysis
from sage_toolkit.token_loss.analysis import DEFAULT_EDGES, DEFAULT_SUBSETS, TokenLossOptions

DESCRIPTION = (
    "The per-token NLL of trained fairseq translation checkpoints, split by how often each token occurs in the "
    "training data."
)


def parse_args(argv=None) -> TokenLossOptions:
    p = argparse.ArgumentParser(
        prog=analysis.PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(analysis.__doc__.split("\n\n")[1:]),
    )  # fmt: skip
    p.add_argument("--data-bin", type=Path, required=True, help="fairseq data-bin the checkpoints were trained on")
    p.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="checkpoints to measure, the first the baseline of the differences (a file, or a save dir: "
        "checkpoint_best.pt, else checkpoint_last.pt)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (token_loss.json)")
    p.add_argument(
        "--subsets", nargs="+", default=list(DEFAULT_SUBSETS), help="splits to score (default valid; e.g. valid train)"
    )
    p.add_argument(
        "--edges",
        type=int,
        nargs="+",
        default=list(DEFAULT_EDGES),
        help="band edges on a token's train count, increasing (default 10 100 1000: < 10, 10-99, 100-999, >= 1000)",
    )
    p.add_argument("--max-sentences", type=int, help="score only each split's first N sentences (default all)")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch (default 4096)")
    p.add_argument(
        "--multiplier-batches",
        type=int,
        default=0,
        help="for checkpoints trained with SAGE: measure the multiplier of the embedding rows on this many train "
        "batches (default 0: off)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of those batches' order and dropout (default 1)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    args = p.parse_args(argv)
    if args.max_tokens < 1:
        p.error(f"--max-tokens must be positive, got {args.max_tokens}")
    if args.max_sentences is not None and args.max_sentences < 1:
        p.error(f"--max-sentences must be positive, got {args.max_sentences}")
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
