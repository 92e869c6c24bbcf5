#!/usr/bin/env python
"""The GPU check of SAGE's fused Triton path: step times, parity with foreach, fairseq-train words/s; JSON + Markdown.

    python scripts/gpu/check_sage_gpu.py --out runs/gpu_check           # on a CUDA GPU after `make setup`, no download
    python scripts/gpu/check_sage_gpu.py --out /tmp/gpu_smoke --smoke   # the same plumbing on the CPU (tests)

Writes OUT/gpu_check.json and OUT/gpu_check.md (see sage_toolkit/gpu/check.py for what is measured).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sage_toolkit.errors import run_command
from sage_toolkit.gpu.check import GpuCheckOptions, run_check


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few steps (the test suite's run)")
    parser.add_argument("--rounds", type=int, help="timed rounds per model and dtype (default 30; smoke 3)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 5; smoke 1)")
    parser.add_argument("--parity-steps", type=int, help="steps of the parity check (default 50; smoke 3)")
    parser.add_argument("--train-updates", type=int, help="updates per fairseq-train run (default 300; smoke 4)")
    parser.add_argument("--no-train", action="store_true", help="leave out the fairseq-train runs")
    args = parser.parse_args(argv)
    defaults = dict(rounds=3, warmup=1, parity_steps=3, train_updates=4) if args.smoke else {}
    given = {k: getattr(args, k) for k in ("rounds", "warmup", "parity_steps", "train_updates")}
    options = GpuCheckOptions(out=args.out, smoke=args.smoke, train=not args.no_train,
                              **{**defaults, **{k: v for k, v in given.items() if v is not None}})  # fmt: skip

    def body() -> dict:
        report = run_check(options)
        print((args.out / "gpu_check.md").read_text(), end="")
        print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
        return report

    return run_command("check_sage_gpu", body)


if __name__ == "__main__":
    main()
