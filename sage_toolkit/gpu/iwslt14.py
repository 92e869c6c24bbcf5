"""GPU check: the full-size IWSLT'14 De-En configs, Adam and SAGE, for a short fixed budget; curves and projected cost.

    python -m data_prep.iwslt14                                  # -> data-bin/iwslt14.tokenized.de-en (downloads)
    python scripts/gpu/check_iwslt14.py --out runs/gpu_iwslt14 [--updates 3000] [--seeds 1]

Trains ``iwslt14_de_en_adam`` and ``iwslt14_de_en_sage`` (transformer_iwslt_de_en, fairseq's recipe, the configs of
configs/) one after the other through sage_toolkit.runner.comparison: validation loss and greedy BLEU every
``--validate-every`` updates, beam-5 test BLEU of the last checkpoint after ``--updates`` updates, ``results.md`` and
``learning_curves.png``. It then writes ``OUT/gpu_check.json``: the device, the measured seconds per update (training
wall-clock, validation included, over the updates run) and, from it, the projected GPU-hours of a full run
(``optimization.max_update`` of the config: 50,000 updates) per optimizer. A short budget is a check of the curves and
of the cost, not a BLEU result: the full run is in docs/experiments.md, "Full-size reproduction on a GPU".

Needs a CUDA GPU; ``--allow-cpu`` runs the same plumbing on the CPU (with ``common.cpu=true``) for a smoke test on a
small data-bin and a shrunken model (any Hydra override after the options applies to both runs).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError, run_command
from sage_toolkit.paths import ROOT
from sage_toolkit.runner.comparison import CompareOptions, compare

PROG = "check_iwslt14"  # the prefix of its messages, and of the runner's
CONFIGS = ["iwslt14_de_en_adam", "iwslt14_de_en_sage"]
FULL_UPDATES = 50_000  # configs/experiment/iwslt14_de_en.yaml, optimization.max_update


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data-bin" / "iwslt14.tokenized.de-en",
                        help="prepared IWSLT'14 data-bin (default data-bin/iwslt14.tokenized.de-en)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--updates", type=int, default=3000, help="updates per optimizer (default 3000)")
    parser.add_argument("--validate-every", type=int, default=500, help="validate every N updates (default 500)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="seeds (default 1)")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (smoke test)")
    parser.add_argument("override", nargs="*", help="Hydra overrides for both runs")
    args = parser.parse_args(argv)
    if args.updates < 1 or args.validate_every < 1:
        parser.error(f"--updates and --validate-every must be positive (got {args.updates}, {args.validate_every})")

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        parser.error("no CUDA GPU found; this is a GPU check (use --allow-cpu for a smoke test of the plumbing)")
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    overrides = [f"optimization.max_update={args.updates}", *([] if cuda else ["common.cpu=true"]), *args.override]
    options = CompareOptions(data=args.data, out=args.out, configs=CONFIGS, seeds=args.seeds,
                             validate_every=args.validate_every, cpu=not cuda, overrides=overrides)  # fmt: skip
    try:
        options.check()
    except ToolkitError as e:
        parser.error(str(e))
    results = run_command(PROG, lambda: compare(options, prog=PROG))

    runs = []
    for run in results["runs"]:
        seconds_per_update = run["train_wall_s"] / max(1, run["updates"])
        runs.append({
            "config": run["config"], "seed": run["seed"], "updates": run["updates"],
            "train_wall_s": run["train_wall_s"], "seconds_per_update": seconds_per_update,
            "words_per_s": run["words_per_s"], "final_valid_loss": run["final_valid_loss"],
            "test_bleu_tok": run["bleu_tok"], "test_sacrebleu": run["sacrebleu"],
            "projected_full_run_gpu_hours": seconds_per_update * FULL_UPDATES / 3600,
        })  # fmt: skip
    report = {
        "device": device,
        "torch": torch.__version__,
        "updates": args.updates,
        "full_run_updates": FULL_UPDATES,
        "overrides": overrides,
        "note": "seconds_per_update: training wall-clock (validation included) / updates run; the projection "
        "multiplies it by the full run's updates (one GPU, the config's batch of 4,096 tokens).",
        "runs": runs,
    }
    out = args.out / "gpu_check.json"
    write_atomic(out, json.dumps(report, indent=1))
    for r in runs:
        hours = r["projected_full_run_gpu_hours"]
        print(f"{r['config']} seed {r['seed']}: {r['seconds_per_update']:.3f} s/update, {r['words_per_s'] or 0:.0f} "
              f"words/s on {device} -> {hours:.1f} h for {FULL_UPDATES} updates")  # fmt: skip
    print(f"wrote {out}, {args.out / 'results.md'}, {args.out / 'learning_curves.png'}")
    return report
