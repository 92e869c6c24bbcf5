"""The command line of the redundancy analysis, ``scripts/analyze_redundancy.py`` (:func:`main`): argument parsing,
:class:`~.options.RedundancyOptions`, one library call (:func:`.analysis.run`), the table on stdout.

    python scripts/analyze_redundancy.py --data-bin DIR --checkpoints NAME=PATH [NAME=PATH ...] --out DIR
        [--subset valid] [--batches 8] [--sparsities 0 0.1 0.2 0.3 0.4 0.5 0.6] [--methods sensitivity magnitude]
        [--bleu/--no-bleu] [--beam 1] [--max-tokens 4096] [--cpu]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_toolkit.errors import run_command
from sage_toolkit.redundancy import analysis, pruning, summary
from sage_toolkit.redundancy.options import DEFAULT_SPARSITIES, METHODS, RedundancyOptions

DESCRIPTION = (
    "Redundancy analysis of trained fairseq translation checkpoints: prune by sensitivity or magnitude, "
    "measure the loss."
)


def parse_args(argv=None) -> RedundancyOptions:
    docs = [analysis.__doc__, pruning.__doc__, summary.__doc__]
    p = argparse.ArgumentParser(
        prog=analysis.PROG, description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(part for doc in docs for part in doc.split("\n\n")[1:]),
    )  # fmt: skip
    p.add_argument("--data-bin", type=Path, required=True, help="fairseq data-bin the checkpoints were trained on")
    p.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="checkpoints to analyse (a file, or a save dir: checkpoint_best.pt, else checkpoint_last.pt)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--subset", default="valid", help="split for loss and BLEU (default valid)")
    p.add_argument(
        "--sensitivity-subset", default="train", help="split whose batches estimate the sensitivity (default train)"
    )
    p.add_argument("--batches", type=int, default=8, help="batches for the sensitivity estimate (default 8)")
    p.add_argument(
        "--sparsities",
        type=float,
        nargs="+",
        default=list(DEFAULT_SPARSITIES),
        help="fractions of the entries in scope to zero, each in [0, 1) (default 0 0.1 ... 0.6)",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rankings (default both)")
    p.add_argument("--bleu", action=argparse.BooleanOptionalAction, default=True, help="measure BLEU (default on)")
    p.add_argument("--beam", type=int, default=1, help="beam size for BLEU (default 1: greedy)")
    p.add_argument("--max-len-a", type=float, default=0.0, help="generation max length a*src_len+b (default 0)")
    p.add_argument("--max-len-b", type=int, default=200, help="generation max length a*src_len+b (default 200)")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch (default 4096)")
    p.add_argument("--seed", type=int, default=1, help="seed of the sensitivity batches' order (default 1)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    p.add_argument(
        "--by-layer-type",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also prune within each layer type alone (embeddings, attention, feed-forward: each ranked among its own "
        "entries), beside the global ranking",
    )
    args = p.parse_args(argv)  # fmt: skip
    for name in ("batches", "beam", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for s in args.sparsities:
        if not 0.0 <= s < 1.0:
            p.error(f"--sparsities: each must be in [0, 1), got {s:g}")
    return RedundancyOptions(
        data_bin=args.data_bin, checkpoints=tuple(args.checkpoints), out=args.out, subset=args.subset,
        sensitivity_subset=args.sensitivity_subset, batches=args.batches,
        sparsities=tuple(sorted(set(args.sparsities))), methods=tuple(dict.fromkeys(args.methods)), bleu=args.bleu,
        beam=args.beam, max_len_a=args.max_len_a, max_len_b=args.max_len_b, max_tokens=args.max_tokens,
        seed=args.seed, cpu=args.cpu, by_layer_type=args.by_layer_type,
    )  # fmt: skip


def main(argv=None) -> int:
    """``scripts/analyze_redundancy.py``: analyse, print the table and what was written."""
    options = parse_args(argv)
    result = run_command(analysis.PROG, lambda: analysis.run(options))
    print(summary.table(result["models"]))
    json_name, *figures = analysis.OUTPUTS
    figures += [analysis.BY_TYPE_OUTPUT] if options.by_layer_type else []
    print(f"{analysis.PROG}: wrote {options.out / json_name}, {', '.join(figures)}")
    return 0
