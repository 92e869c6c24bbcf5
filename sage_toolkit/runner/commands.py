"""Adam versus SAGE: train a pair of Hydra configs over N seeds, evaluate, tabulate, plot.

    sage-compare --configs demo_adam demo_sage --seeds 1 2 3 --data data-bin/demo --out runs/demo
    (also python scripts/compare.py ...)

For every (config, seed) it runs `fairseq-hydra-train --config-dir configs --config-name CONFIG` into
OUT/CONFIG/seedN (validating with BLEU during training, so the learning curves have both validation loss and BLEU),
then `scripts/evaluate.py` on the test set, and finally writes OUT/results.json, OUT/results.md and
OUT/learning_curves.png. Re-running skips finished runs (those with an eval file) and resumes unfinished ones from
their checkpoint_last.pt; a training that already completed (fairseq logged the end of training, or checkpoint_last.pt
reached optimization.max_update) is never trained further. With --jobs 2 two runs train at the same time, one core each.

Children (fairseq-hydra-train, scripts/evaluate.py) run in their own process groups. SIGINT (Ctrl-C), SIGTERM or SIGHUP
stops every one of them (SIGTERM to the group, SIGKILL after 10 s), starts nothing further and exits with 128 + the
signal number (130 for Ctrl-C) and a one-line message. A run that fails stops the runner the same way (the others
resume on the next call) and prints the run's name, its log and the end of its error; exit status 1. The output folder
is locked while a runner works in it (OUT/.runner.lock) and every run folder while a trainer or evaluation writes it
(OUT/.../seedN/.lock, held by the children too, so an orphaned trainer still holds it): another runner refuses,
naming the folder and the PID that holds it. A lock whose holder died is taken over.

The library: sage_toolkit.runner (comparison, training, process, report; locks in sage_toolkit.atomic).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_toolkit.cli import command_parser
from sage_toolkit.errors import ToolkitError, run_command
from sage_toolkit.runner.comparison import PROG, CompareOptions, compare

DESCRIPTION = (
    "Adam versus SAGE: train Hydra configs of configs/ over N seeds (validating with loss and greedy BLEU), evaluate "
    "each on the test set, and write results.md, results.json and learning_curves.png. Re-running resumes."
)
EXAMPLES = [
    "sage-compare --configs demo_adam demo_sage --seeds 1 2 3 --data data-bin/demo --out runs/demo --jobs 2 --cpu",
    "sage-compare --configs multi30k_en_de_adam multi30k_en_de_sage --data data-bin/multi30k.en-de.bpe "
    "--out runs/multi30k --validate-every 500",
    "sage-compare --data data-bin/demo --out runs/demo-short --cpu optimization.max_update=200",
]


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, DESCRIPTION, "%(prog)s --data DIR --out DIR [options] [OVERRIDE ...]", EXAMPLES)
    runs = parser.add_argument_group("runs")
    runs.add_argument("--configs", nargs="+", default=["demo_adam", "demo_sage"], help="config names in configs/")
    runs.add_argument("--seeds", nargs="+", type=int, default=[1], help="seeds, each run with every config")
    runs.add_argument("--data", type=Path, required=True, help="the prepared data-bin folder")
    runs.add_argument("--out", type=Path, required=True, help="output folder (runs, results, plot)")
    runs.add_argument("--jobs", type=int, default=1, help="runs trained at the same time, one core each")
    runs.add_argument("override", nargs="*", help="Hydra overrides for every run, e.g. optimization.max_update=100")
    valid = parser.add_argument_group("validation during training")
    valid.add_argument("--validate-every", type=int, default=0,
                       help="validate every N updates (0: as the config says)")  # fmt: skip
    valid.add_argument("--no-valid-bleu", dest="valid_bleu", action="store_false",
                       help="validation loss only (no greedy BLEU during training)")  # fmt: skip
    test = parser.add_argument_group("test evaluation")
    test.add_argument("--beam", type=int, default=5, help="beam size of the test translation")
    test.add_argument("--lenpen", type=float, default=1.0, help="length penalty of the test translation")
    test.add_argument("--cpu", action="store_true", help="evaluate on the CPU")
    output = parser.add_argument_group("output")
    output.add_argument("--verbose", action="store_true", help="show every line of fairseq's output")
    output.add_argument("--note", default="", help="a paragraph printed under the table and kept in results.md/json")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    options = CompareOptions(
        data=args.data, out=args.out, configs=args.configs, seeds=args.seeds, jobs=args.jobs, beam=args.beam,
        lenpen=args.lenpen, validate_every=args.validate_every, valid_bleu=args.valid_bleu, cpu=args.cpu,
        verbose=args.verbose, overrides=args.override, note=args.note,
    )  # fmt: skip
    try:
        options.check()
    except ToolkitError as e:
        parser.error(str(e))  # usage, then the error: exit status 2
    return run_command(PROG, lambda: compare(options))


def cli() -> None:
    """The console script's entry point (it exits with what this returns: main's dict is not an exit status)."""
    main()
