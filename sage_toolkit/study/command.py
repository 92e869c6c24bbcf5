"""``sage-study SPEC``: a tuned Adam-versus-SAGE study from one spec file (grid on validation, seeds, length penalty,
test, significance; :mod:`.protocol`), and its one-job modes: ``--only``/``--next`` (pieces of a long study),
``--grid``, ``--budget``, ``--retest``, ``--list-checkpoints``. The command and its outputs: docs/toolkit.md; the
studies: docs/experiments.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_toolkit.cli import command_parser
from sage_toolkit.errors import ToolkitError, run_command
from sage_toolkit.study.budget import budget, fit_decay, measured_fall
from sage_toolkit.study.generalization import excess
from sage_toolkit.study.grid import describe_edges, edges, winner
from sage_toolkit.study.protocol import PROG, Study, retest, run_only, run_study
from sage_toolkit.study.report import list_checkpoints
from sage_toolkit.study.spec import load_spec

DESCRIPTION = (
    "A tuned Adam-versus-SAGE study from one spec file: grid on the validation set, the winner with every seed, the "
    "length penalty on validation, then the test sets; tables with significance tests, plots, study.json. "
    "Re-running resumes."
)
EXAMPLES = [
    "sage-study studies/multi30k_de_en.yaml --out runs/multi30k_de_en --jobs 2",
    "sage-study studies/multi30k_de_en_converged_final.yaml --next 2",
    "sage-study studies/multi30k_de_en.yaml --out runs/multi30k_de_en --list-checkpoints",
]


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(PROG, DESCRIPTION, "%(prog)s SPEC [--out DIR] [options]", EXAMPLES)
    study = parser.add_argument_group("the study")
    study.add_argument("spec", type=Path, help="study spec (YAML), e.g. studies/multi30k_de_en.yaml")
    study.add_argument("--out", type=Path, help="output folder (default: the spec's 'out')")
    study.add_argument("--jobs", type=int, help="trainings/evaluations at the same time (default: the spec's)")
    study.add_argument("--gpu", dest="cpu", action="store_false", help="translate on the GPU (default: CPU)")
    jobs = parser.add_argument_group("one job instead of the whole study (at most one of these)")
    mode = jobs.add_mutually_exclusive_group()
    mode.add_argument(
        "--only",
        nargs="+",
        metavar="RUN",
        help="train and record only these runs (OPTIMIZER/SETTING: the tune seed's; OPTIMIZER/SETTING/seedN), side by "
        "side, and stop without study.json: a long study in pieces that fit a sitting",
    )
    mode.add_argument(
        "--next",
        type=int,
        metavar="N",
        help="train and record the next N runs that the spec's record does not hold (the tune seed's settings, then "
        "seed by seed each optimizer with one setting), as --only would: the same command at every sitting",
    )
    mode.add_argument(
        "--budget",
        nargs="+",
        metavar="RUN",
        help="print how fast the validation loss of these trained runs (as --only names them) still falls, and the "
        "budget at which a power-law fit of each predicts a fall of at most --max-fall per 1,000 updates "
        "(sage_toolkit.study.budget); trains nothing",
    )
    mode.add_argument(
        "--grid",
        action="store_true",
        help="print each optimizer's grid as far as it is trained and evaluated (validation sacreBLEU, BP, final "
        "validation loss), its winner so far and whether the winner is at an edge of the grid "
        "(sage_toolkit.study.grid); trains nothing",
    )
    mode.add_argument(
        "--retest",
        action="store_true",
        help="recompute the paired tests (sacreBLEU's paired bootstrap per seed pair and pooled, the two-level "
        "bootstrap over the seed pairs) of the finished study whose study.json is in --out, from its runs' hypotheses "
        "(the record's), and rewrite study.json's significance and study.md from it; the tests study.json holds must "
        "come out the same; trains and translates nothing",
    )
    mode.add_argument(
        "--list-checkpoints",
        action="store_true",
        help="print OPTIMIZER/seedN=PATH of the finished study's final checkpoints (for sage-analyze-redundancy)",
    )
    jobs.add_argument("--max-fall", type=float, help="--budget's threshold, per 1,000 updates (default 0.01)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    max_fall = check_arguments(parser, args)
    try:  # a bad spec, data-bin or --out is a usage error: exit status 2
        spec = load_spec(args.spec)
        out = (args.out or Path(spec.out or parser.error("--out: the spec has no 'out'"))).absolute()
        if args.list_checkpoints:
            return print_checkpoints(out)
        study = Study(spec, out, args.jobs or spec.jobs, args.cpu)
        if args.next is not None:
            args.only = next_runs(study, args.next)
            if not args.only:
                return {}
        for name in args.only or []:  # the names are checked before anything starts
            study.run_named(name)
        if args.grid:
            return print_grid(study)
        if args.budget:
            return print_budget(study, args.budget, max_fall)
    except ToolkitError as e:
        parser.error(str(e))
    if args.only:
        return run_command(PROG, lambda: run_only(study, args.only))
    if args.retest:
        return run_command(PROG, lambda: retest(study))
    return run_command(PROG, lambda: run_study(study))


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> float:
    """The checks of the options among themselves (parser.error, exit status 2); --budget's threshold."""
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.max_fall is not None and not args.budget:
        parser.error("--max-fall is --budget's threshold: give it with --budget")
    reading = next((f"--{m}" for m in ("budget", "grid", "retest", "list_checkpoints") if getattr(args, m)), None)
    given = [flag for flag, value in (("--jobs", args.jobs is not None), ("--gpu", not args.cpu)) if value]
    if reading and given:  # these only read what is recorded: an option for trainings would be ignored
        parser.error(f"{given[0]}: {reading.replace('_', '-')} trains and translates nothing")
    return 0.01 if args.max_fall is None else args.max_fall


def print_checkpoints(out: Path) -> dict:
    """--list-checkpoints: the finished study's final checkpoints, NAME=PATH on one line."""
    checkpoints = list_checkpoints(out)
    print(" ".join(f"{name}={path}" for name, path in checkpoints.items()))
    return checkpoints


def next_runs(study: Study, count: int) -> list[str]:
    """--next: the names of the next ``count`` runs the record lacks, printed (none: a line saying so)."""
    if count < 1:
        raise ToolkitError(f"--next must be >= 1, got {count}")
    names = study.unrecorded(count)
    if not names:
        print(f"every run --next can name is recorded in {study.spec.record}: run the study without it")
    else:
        print("next: " + " ".join(names))
    return names


def print_grid(study: Study) -> dict:
    """The --grid table: every optimizer's grid settings with what is known of them (and the mean excess of their
    validation loss over the first optimizer's grid runs at the same training loss,
    :mod:`sage_toolkit.study.generalization`; a run of the first optimizer against its other runs), then per optimizer
    its winner among the evaluated settings and where it stands on the grid's axes. Returns {optimizer: {"settings",
    "winner", "edges", "complete"}}."""
    spec, result = study.spec, {}
    model = "last checkpoint" if study.primary == "last" else study.primary
    statuses = {name: study.grid_status(name) for name in spec.optimizers}
    base = next(iter(spec.optimizers))
    print(f"| optimizer | setting | state | updates | valid sacreBLEU ({model}, beam {spec.beam}, lenpen 1) | BP "
          f"| final valid loss | valid loss − {base}'s at the same train loss |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, optimizer in spec.optimizers.items():
        status = statuses[name]
        for setting, s in status.items():
            references = [r["curve"] for other, r in statuses[base].items()
                          if r.get("curve") and (name, setting) != (base, other)]  # fmt: skip
            s["excess"] = excess(s["curve"], references)["mean"] if s.get("curve") and references else None
            numbers = [
                "" if s[key] is None else format(s[key], digits)
                for key, digits in (
                    ("valid_sacrebleu", ".2f"),
                    ("valid_bp", ".3f"),
                    ("final_valid_loss", ".3f"),
                    ("excess", "+.3f"),
                )  # fmt: skip
            ]
            print(f"| {name} | {setting} | {s['state']} | {s['updates'] or ''} | " + " | ".join(numbers) + " |")
        best = winner(status)
        complete = all(s["state"] in ("evaluated", "failed") for s in status.values())
        result[name] = {"settings": status, "winner": best, "complete": complete,
                        "edges": {} if best is None else edges(optimizer.grid, best)}  # fmt: skip
    for name, optimizer in spec.optimizers.items():
        r = result[name]
        if r["winner"] is None:
            print(f"{name}: no setting evaluated yet")
            continue
        done = sum(s["state"] in ("evaluated", "failed") for s in r["settings"].values())
        so_far = "" if r["complete"] else f" so far ({done} of {len(r['settings'])} settings done)"
        where = describe_edges(optimizer.grid, r["winner"]) or "the grid has no numeric axis"
        rule = "; at an edge: the grid extends that way before the seeds" if r["edges"] else ""
        print(f"{name}: winner{so_far} {r['winner']} ({where}){rule}")
    return result


def print_budget(study: Study, names: list[str], max_fall: float) -> dict:
    """The --budget table: per run its last update, the measured fall over the last 1,000 updates, the power-law fit
    and its predicted fall there; then the budget for all of them. ToolkitError for a run not trained yet."""
    if not max_fall > 0:
        raise ToolkitError(f"--max-fall must be > 0, got {max_fall}")
    rows, fits = [], []
    for name in names:
        run = study.run_named(name)
        summary = study.training_summary(run) if study.recorded(run) or (run.dir / "train.log").exists() else None
        if not summary or not summary["curve"]:
            raise ToolkitError(f"--budget {name}: not trained yet (no record and no train.log in {run.dir})")
        curve = summary["curve"]
        fit, last = fit_decay(curve), max(p["update"] for p in curve)
        fits.append(fit)
        rows.append({"run": name, "update": last, "measured_fall": measured_fall(curve), "fit": fit.__dict__,
                     "predicted_fall": fit.fall(last)})  # fmt: skip
    minimum = max(row["update"] for row in rows)
    result = {"max_fall": max_fall, "runs": rows, "budget": budget(fits, max_fall, minimum=minimum)}
    print("| run | last update | measured fall / 1k (last 1k) | fit floor + scale*(t/1k)^-decay "
          "| predicted fall / 1k |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in rows:
        f = row["fit"]
        print(f"| {row['run']} | {row['update']} | {row['measured_fall']:.4f} | {f['floor']:.3f} + {f['scale']:.3f}"
              f"*(t/1k)^-{f['decay']:.3f} (rmse {f['rmse']:.4f}) | {row['predicted_fall']:.4f} |")  # fmt: skip
    print(f"budget: {result['budget']} updates (every fit predicts a fall <= {max_fall:g} per 1,000 updates there)")
    return result


def cli() -> None:
    """The console script's entry point (it exits with what this returns: main's dict is not an exit status)."""
    main()
