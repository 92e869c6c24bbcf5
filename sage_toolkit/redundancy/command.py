"""The command line of ``sage-analyze-redundancy`` (also ``scripts/analyze_redundancy.py``): the parser, the options
(:class:`~.options.RedundancyOptions`), one library call (:func:`.analysis.run`), the table on stdout."""

from __future__ import annotations

import argparse

from sage_toolkit.cli import add_device_options, checkpoint_analysis_parser, require_positive
from sage_toolkit.errors import run_command
from sage_toolkit.redundancy import analysis, summary
from sage_toolkit.redundancy.options import DEFAULT_SPARSITIES, METHODS, RedundancyOptions

DESCRIPTION = (
    "Redundancy analysis of trained fairseq translation checkpoints: estimate each weight's sensitivity |theta * grad| "
    "on training batches, prune (zero) the least sensitive or smallest weights at several sparsities, and measure the "
    "validation loss and BLEU; redundancy.json and plots in --out."
)
EXAMPLES = [
    "sage-analyze-redundancy --data-bin data-bin/multi30k.de-en.bpe --checkpoints adam=runs/a sage=runs/s --out red",
    "sage-analyze-redundancy --data-bin DATA --checkpoints adam/seed1=A1 adam/seed2=A2 sage/seed1=S1 sage/seed2=S2 "
    "--out red --by-layer-type --cpu",
    "sage-analyze-redundancy --data-bin DATA --checkpoints sage=ckpt.pt --out red --no-bleu --sparsities 0 0.3 0.6",
]


def build_parser() -> argparse.ArgumentParser:
    p = checkpoint_analysis_parser(
        analysis.PROG, DESCRIPTION, EXAMPLES, out_help="output folder",
        checkpoints_help="checkpoints to analyse (a file, or a save dir: checkpoint_best.pt, else checkpoint_last.pt); "
        "GROUP/NAME=PATH groups seeds into a mean ± std",
    )  # fmt: skip
    pruning_options = p.add_argument_group("sensitivity and pruning")
    pruning_options.add_argument(
        "--sensitivity-subset", default="train", help="split whose batches estimate the sensitivity"
    )
    pruning_options.add_argument("--batches", type=int, default=8, help="batches for the sensitivity estimate")
    pruning_options.add_argument("--seed", type=int, default=1, help="seed of the sensitivity batches' order")
    pruning_options.add_argument(
        "--sparsities",
        type=float,
        nargs="+",
        default=list(DEFAULT_SPARSITIES),
        help="fractions of the entries in scope to zero, each in [0, 1)",
    )
    pruning_options.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rankings")
    pruning_options.add_argument(
        "--by-layer-type",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also prune within each layer type alone (embeddings, attention, feed-forward: each ranked among its own "
        "entries), beside the global ranking",
    )
    measure = p.add_argument_group("measurement")
    measure.add_argument("--subset", default="valid", help="split for loss and BLEU")
    measure.add_argument("--bleu", action=argparse.BooleanOptionalAction, default=True, help="measure BLEU")
    measure.add_argument("--beam", type=int, default=1, help="beam size for BLEU (1: greedy)")
    measure.add_argument("--max-len-a", type=float, default=0.0, help="generation max length a*src_len+b: a")
    measure.add_argument("--max-len-b", type=int, default=200, help="generation max length a*src_len+b: b")
    add_device_options(measure)
    return p


def parse_args(argv=None) -> RedundancyOptions:
    p = build_parser()
    args = p.parse_args(argv)  # fmt: skip
    require_positive(p, args, "batches", "beam", "max_tokens")
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


if __name__ == "__main__":  # python -m sage_toolkit.redundancy.command: how the runners start it
    raise SystemExit(main())
