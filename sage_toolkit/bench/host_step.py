"""The host side of one SAGE step: microseconds per step for few and for many small tensors, so that the difference
per extra tensor is the per-tensor host work (issue 32), for the list path (the code before launch plans) and the plan.

    python scripts/bench/bench_host_step.py                      # triton (interpreter, launch stubbed) and fused
    python scripts/bench/bench_host_step.py --tensors 20 400 --rounds 200

``triton``: CPU tensors with TRITON_INTERPRET=1 and the kernel launch replaced by a no-op, so that only the host work
is timed (on a GPU the launch is asynchronous; the GPU check times the real step). ``fused``: the CPU kernel runs, on
4-entry tensors (its work is the same for both paths). Rounds alternate the two paths; the figure is the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from fairseq_plugins.optim import AdamSAGE
from fairseq_plugins.optim import _fused_triton as FT


def _optimizer(n: int, impl: str, plans: bool) -> AdamSAGE:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, generator=gen) for _ in range(n)]
    for p in params:
        p.grad = torch.randn(4, generator=gen)
    opt = AdamSAGE(params, lr=1e-3, impl=impl)
    opt._launch_plans = plans
    opt.step()  # the plan is built here, outside the timed steps
    return opt


def host_us(tensors: list[int], impls: list[str], rounds: int) -> dict:
    """impl -> path -> tensors -> median microseconds of one step."""
    previous, launch = os.environ.get("TRITON_INTERPRET"), FT._launch
    os.environ["TRITON_INTERPRET"] = "1"
    FT._launch = lambda kernel, grid, args, constants: None  # host work only
    try:
        out = {}
        for impl in impls:
            opts = {(path, n): _optimizer(n, impl, path == "plan") for path in ("lists", "plan") for n in tensors}
            times: dict[tuple, list[float]] = {key: [] for key in opts}
            for _ in range(rounds):
                for key, opt in opts.items():
                    start = time.perf_counter()
                    opt.step()
                    times[key].append((time.perf_counter() - start) * 1e6)
            out[impl] = {path: {n: statistics.median(times[(path, n)]) for n in tensors} for path in ("lists", "plan")}
        return out
    finally:
        FT._launch = launch
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, nargs=2, default=[20, 400], metavar=("FEW", "MANY"))
    ap.add_argument("--impls", nargs="+", default=["triton", "fused"], choices=["triton", "fused"])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    few, many = args.tensors
    results = host_us([few, many], args.impls, args.rounds)
    for impl, paths in results.items():
        per = {path: (us[many] - us[few]) / (many - few) for path, us in paths.items()}
        for path, us in paths.items():
            print(f"{impl:7s} {path:6s} {few} tensors {us[few]:8.1f} us, {many} tensors {us[many]:8.1f} us, "
                  f"per extra tensor {per[path]:6.2f} us")  # fmt: skip
        print(f"{impl:7s} per extra tensor, plan / list path: {per['plan'] / per['lists']:.3f}")
    return results
