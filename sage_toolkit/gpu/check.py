"""The one GPU check of SAGE's fused Triton path: step times, parity, end-to-end speed; JSON and a Markdown table.

On a CUDA GPU (a bare machine after ``make setup``, no download; about 3 to 5 minutes on one GPU, 8 at most):

1. optimizer step time of torch's fused AdamW, fairseq's ``adam``, SAGE ``foreach`` and SAGE ``triton`` on the
   parameter shapes of transformer_wmt_en_de and transformer_vaswani_wmt_en_de_big, fp32 and bf16 parameters,
   interleaved rounds, medians, as ratios to fused AdamW, with each optimizer's state and transient memory
   (:mod:`.steps`);
2. parity of the triton and foreach paths: the largest relative difference of any parameter or state tensor after
   ``parity_steps`` steps, fp32 and bf16;
3. ``fairseq-train`` words/s and peak memory of ``adam`` and ``adam_sage`` (foreach, triton) with ``--fp16`` on
   transformer_iwslt_de_en for ``train_updates`` updates of a synthetic corpus (:mod:`.train_speed`).

``smoke``: the same code on the CPU with a tiny model and a few steps (Triton's interpreter for the triton path where
Triton is installed), for the test suite; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError, run_command

from . import steps, train_speed


@dataclass
class GpuCheckOptions:
    """What the check runs: ``out`` gets ``gpu_check.json`` and ``gpu_check.md``."""

    out: Path
    smoke: bool = False  # CPU, tiny shapes, a few steps (the test suite's run)
    rounds: int = 30  # timed rounds per model and dtype
    warmup: int = 5
    parity_steps: int = 50
    train_updates: int = 300  # per fairseq-train run
    train: bool = True  # run the fairseq-train part
    train_timeout: float = 240.0  # seconds per fairseq-train run


@contextlib.contextmanager
def _interpreter_for_cpu(smoke: bool):
    """In smoke mode the triton path runs in Triton's interpreter on the CPU (TRITON_INTERPRET, restored after)."""
    previous = os.environ.get("TRITON_INTERPRET")
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if smoke:
            if previous is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = previous


def _machine(device: torch.device) -> dict:
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")  # fmt: skip
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def run_check(options: GpuCheckOptions) -> dict:
    """Run the check, write ``gpu_check.json`` and ``gpu_check.md`` into ``options.out``; returns the JSON's dict."""
    if not options.smoke and not torch.cuda.is_available():
        raise ToolkitError("no CUDA device: the GPU check needs one (--smoke runs its plumbing on the CPU)")
    if min(options.rounds, options.parity_steps, options.train_updates) < 1 or options.warmup < 0:
        raise ToolkitError("--rounds, --parity-steps and --train-updates must be positive, --warmup not negative")
    device = torch.device("cpu" if options.smoke else "cuda")
    models = ["tiny"] if options.smoke else ["transformer_wmt_en_de", "transformer_vaswani_wmt_en_de_big"]
    started = time.perf_counter()
    report: dict = dict(machine=_machine(device), options={k: str(v) for k, v in vars(options).items()})
    with _interpreter_for_cpu(options.smoke):
        report["steps"] = []
        for model in models:
            for dtype in (torch.float32, torch.bfloat16):
                rows = steps.time_steps(model, dtype, list(steps.VARIANTS), options.rounds, options.warmup, device)
                report["steps"] += [dataclasses.asdict(r) for r in rows]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        report["parity"] = []
        for dtype in (torch.float32, torch.bfloat16):
            try:
                report["parity"].append(steps.parity(models[0], dtype, options.parity_steps, device))
            except Exception as exc:  # e.g. Triton missing: reported, the rest still runs
                name = str(dtype).removeprefix("torch.")
                report["parity"].append(dict(model=models[0], dtype=name, error=f"{type(exc).__name__}: {exc}"))
        report["kernel_variants_compiled"] = _compiled_variants()
    report["train"] = _train(options) if options.train else []
    report["seconds"] = round(time.perf_counter() - started, 1)
    options.out.mkdir(parents=True, exist_ok=True)
    write_atomic(options.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    write_atomic(options.out / "gpu_check.md", markdown(report))
    return report


def _compiled_variants() -> int | None:
    """How many variants Triton's JIT compiled for the fused kernel in this process (one per dtype pair, optimizer
    and SAGE or plain is the design: none per step); None where it did not run compiled."""
    from fairseq_plugins.optim import _fused_triton

    kernel = _fused_triton._kernels.get(False)
    caches = getattr(kernel, "device_caches", None)
    if not caches:
        return None
    return sum(len(cache[0]) for cache in caches.values())


def _train(options: GpuCheckOptions) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="sage_gpu_check_") as tmp:
        work = Path(tmp)
        pairs, vocab = (300, 50) if options.smoke else (40000, 8000)
        data_bin = train_speed.build_data_bin(work, pairs, vocab, cpu=options.smoke, workers=1 if options.smoke else 8)
        runs = ["adam", "adam_sage_foreach"] if options.smoke else list(train_speed.RUNS)
        return [dataclasses.asdict(train_speed.train(name, data_bin, work, options.train_updates, options.smoke,
                                                     options.train_timeout)) for name in runs]  # fmt: skip


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(title: str, header: list[str], rows: list[list]) -> list[str]:
    return ["", title, "", _row(*header), _row(*["---"] * len(header))] + [_row(*r) for r in rows]


def markdown(report: dict) -> str:
    """The short table of the report: step times and ratios, parity, fairseq-train words/s and memory."""
    m = report["machine"]
    lines = [f"GPU check on {m['device']} (torch {m['torch']}, CUDA {m['cuda']}, Triton {m['triton']}), "
             f"{report['seconds']} s."]  # fmt: skip
    rows = []
    for r in report["steps"]:
        cells = [r["model"], r["dtype"], r["variant"]]
        if r["error"]:
            rows.append(cells + [f"error: {r['error'][:80]}", "", "", ""])
        else:
            rows.append(cells + [_num(r["median_ms"], 3), _num(r["ratio_to_adamw_fused"]), _num(r["state_mb"], 0),
                                 _num(r["transient_mb"], 0)])  # fmt: skip
    lines += _table("Optimizer step: median ms, ratio to torch AdamW (fused), MB of state, MB transient peak:",
                    ["model", "dtype", "optimizer", "ms", "ratio", "state MB", "transient MB"], rows)  # fmt: skip
    rows = []
    for p in report["parity"]:
        if "error" in p:
            rows.append([p["model"], p["dtype"], "", f"error: {p['error'][:80]}", "", "", ""])
        else:
            rows.append([p["model"], p["dtype"], p["steps"], f"{p['max_rel_diff']:.2e}",
                         f"{p['max_rel_err_triton']:.2e}", f"{p['max_rel_err_foreach']:.2e}",
                         f"{p['max_abs_param_diff']:.2e}"])  # fmt: skip
    lines += _table("Parity of SAGE triton and foreach: largest difference of any parameter or state tensor, "
                    "relative to its largest magnitude, between the two and from a float64 run (the exact result):",
                    ["model", "dtype", "steps", "triton vs foreach", "triton vs float64", "foreach vs float64",
                     "max abs param diff"], rows)  # fmt: skip
    lines += ["", f"Kernel variants compiled: {report.get('kernel_variants_compiled')}."]
    if report["train"]:
        rows = []
        for t in report["train"]:
            if t["error"]:
                rows.append([t["run"], t["updates"], f"error: {t['error'][:80]}", "", ""])
            else:
                rows.append([t["run"], t["updates"], _num(t["words_per_second"], 0), _num(t["updates_per_second"]),
                             _num(t["peak_memory_mb"], 0)])  # fmt: skip
        title = "fairseq-train transformer_iwslt_de_en on a synthetic corpus (medians of the logged intervals after "
        lines += _table(title + "the first):", ["run", "updates", "words/s", "updates/s", "peak MB"], rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """``scripts/gpu/check_sage_gpu.py``: the check, then its Markdown table on stdout."""
    parser = argparse.ArgumentParser(description="The GPU check of SAGE's fused Triton path (JSON + Markdown).")
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
