"""The optimizer benchmark of sage_toolkit.bench.optimizer on a CUDA GPU; writes its results (with the device) as JSON.

    python scripts/gpu/bench_optimizer_gpu.py --json bench_gpu.json              # both models, 50 rounds
    python scripts/gpu/bench_optimizer_gpu.py --device cpu --models tiny --rounds 2 --no-compile   # smoke test, no GPU

Variants: torch AdamW (fused=True, the reference of the ratios, and foreach), AdamSAGE with ``impl="foreach"`` (what
``auto`` picks on CUDA where Triton cannot run; the Triton kernel is timed by scripts/gpu/check_sage_gpu.py) and
``single_tensor``, fairseq's ``adam``, the authors'-style loop, and ``sage_compiled_flat``:
the SAGE step as one torch.compile'd element-wise function over flat buffers (inductor emits a Triton kernel on CUDA;
every changing scalar is a 0-dim tensor, so it compiles once). Time: median over interleaved rounds with
``torch.cuda.synchronize()`` around each step. Memory: persistent state bytes; transient = ``max_memory_allocated``
during one step minus ``memory_allocated`` before it.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from . import optimizer as bench

GPU_VARIANTS = [
    "sage_foreach",
    "sage_single_tensor",
    "adamw_fused",
    "adamw_foreach",
    "fairseq_adam",
    "authors_loop",
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["wmt", "iwslt"], choices=sorted(bench.MODELS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="leave out sage_compiled_flat")
    ap.add_argument("--json", default="bench_optimizer_gpu.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run scripts/bench/bench_optimizer.py for the CPU figures")
    names = GPU_VARIANTS + ([] if args.no_compile else ["sage_compiled_flat"])
    info = bench.machine()
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info["cuda"] = torch.version.cuda
    out = bench.bench_models(info, args.models, names, args.rounds, args.warmup, device)
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")
    return out
