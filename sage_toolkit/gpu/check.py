"""The one GPU check of SAGE's triton step: step times eager and captured, parity, syncs, FSDP, fairseq-train speed.

One command on a CUDA GPU (after ``make setup``, or on a bare machine with scripts/gpu/bare_machine_bundle.sh), about
4 to 5 minutes once the machine is ready; it rewrites ``gpu_check.json`` and ``gpu_check.md`` after every part, so a
run that is cut off still leaves what it measured:

1. the optimizer step (:mod:`.steps`) of torch's fused AdamW, eager and captured in a CUDA graph (capturable=True),
   and SAGE's triton step through the list path of before launch plans, through the plan, and the plan captured, on
   the shapes of transformer_wmt_en_de and transformer_vaswani_wmt_en_de_big in fp32 and bf16: synchronised and
   pipelined milliseconds, host and kernel microseconds per step, state and transient memory, ratios to fused AdamW;
2. parity of the plan with the list path, the captured plan and a float64 run (fp32, bf16);
3. the plan under ``torch.cuda.set_sync_debug_mode("error")`` (float lr changing, lr and strength tensors; the list
   path as the control that the check sees a sync);
4. ``fairseq-train --ddp-backend fully_sharded`` with ``adam_sage`` (one process) and a resume (:mod:`.fsdp`);
5. ``fairseq-train`` words/s of ``adam`` and ``adam_sage`` in fp32 (per-tensor parameters) (:mod:`.train_speed`);
6. with ``--compile``, torch.compile'd AdamW against fused AdamW on transformer_wmt_en_de fp32 (last: it compiles
   for a minute or more).

The last line printed (and of the Markdown) is the ratio of SAGE's step to fused AdamW's.

``smoke``: the same code on the CPU with a tiny model and a few steps (Triton's interpreter for the triton path), for
the test suite; the parts that need CUDA are reported as skipped, and the numbers mean nothing.
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

from . import fsdp, steps, train_speed

FULL_MODELS = ("transformer_wmt_en_de", "transformer_vaswani_wmt_en_de_big")
TRAIN_RUNS = ("adam_fp32", "adam_sage_triton_fp32")


@dataclass
class GpuCheckOptions:
    """What the check runs: ``out`` gets ``gpu_check.json`` and ``gpu_check.md``."""

    out: Path
    smoke: bool = False  # CPU, tiny shapes, a few steps (the test suite's run)
    rounds: int = 30  # timed rounds per model and dtype
    warmup: int = 5
    pipeline: int = 50  # steps issued back to back in a pipelined measure
    parity_steps: int = 50
    train_updates: int = 200  # per fairseq-train speed run
    train: bool = True  # run the fairseq-train parts (FSDP and speed)
    compile: bool = False  # torch.compile'd AdamW (a minute or more of compilation)
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
    try:
        import fairscale

        info["fairscale"] = fairscale.__version__
    except ImportError:
        info["fairscale"] = None
    return info


def run_check(options: GpuCheckOptions) -> dict:
    """Run the check, writing ``gpu_check.json`` and ``gpu_check.md`` into ``options.out`` after every part; returns
    the JSON's dict."""
    if not options.smoke and not torch.cuda.is_available():
        raise ToolkitError("no CUDA device: the GPU check needs one (--smoke runs its plumbing on the CPU)")
    if min(options.rounds, options.parity_steps, options.train_updates, options.pipeline) < 1 or options.warmup < 0:
        raise ToolkitError("--rounds, --pipeline, --parity-steps and --train-updates must be positive, --warmup not "
                           "negative")  # fmt: skip
    device = torch.device("cpu" if options.smoke else "cuda")
    models = ["tiny"] if options.smoke else list(FULL_MODELS)
    started = time.perf_counter()
    report: dict = dict(machine=_machine(device), options={k: str(v) for k, v in vars(options).items()}, steps=[],
                        parity=[], sync=None, fsdp=None, train=[], compiled=[], done=[])  # fmt: skip
    options.out.mkdir(parents=True, exist_ok=True)

    def save(part: str) -> None:
        report["done"].append(part)
        report["seconds"] = round(time.perf_counter() - started, 1)
        report["closing"] = closing_line(report)
        write_atomic(options.out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
        write_atomic(options.out / "gpu_check.md", markdown(report))

    small = dict(pipeline_repeats=2, profiled=2) if options.smoke else {}
    with _interpreter_for_cpu(options.smoke):
        for model in models:
            for dtype in (torch.float32, torch.bfloat16):
                rows = steps.time_steps(model, dtype, list(steps.STEP_VARIANTS), options.rounds, options.warmup,
                                        device, pipeline=options.pipeline, **small)  # fmt: skip
                report["steps"] += [dataclasses.asdict(r) for r in rows]
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                save(f"steps {model} {dtype}")
        for dtype in (torch.float32, torch.bfloat16):
            try:
                report["parity"].append(steps.parity(models[0], dtype, options.parity_steps, device))
            except Exception as exc:  # reported, the rest still runs
                name = str(dtype).removeprefix("torch.")
                report["parity"].append(dict(model=models[0], dtype=name, error=f"{type(exc).__name__}: {exc}"))
        report["kernel_variants_compiled"] = _compiled_variants()
        save("parity")
        report["sync"] = _guarded(lambda: steps.sync_check(models[0], device))
        save("sync")
    if options.train:
        with tempfile.TemporaryDirectory(prefix="sage_gpu_check_") as tmp:
            report["fsdp"] = _guarded(lambda: fsdp.check_fsdp(Path(tmp) / "fsdp", cuda=not options.smoke,
                                                              timeout=options.train_timeout))  # fmt: skip
            save("fsdp")
            report["train"] = _train(options, Path(tmp) / "speed")
            save("train")
    if options.compile and not options.smoke:
        rows = steps.time_steps(models[0], torch.float32, ["adamw_fused", "adamw_compiled"], options.rounds,
                                options.warmup, device, pipeline=options.pipeline)  # fmt: skip
        report["compiled"] = [dataclasses.asdict(r) for r in rows]
        save("compiled")
    save("end")
    return report


def _guarded(part) -> dict:
    try:
        return part()
    except Exception as exc:  # one part's failure is its result; the check goes on
        return dict(error=f"{type(exc).__name__}: {exc}"[:500])


def _compiled_variants() -> int | None:
    """How many variants Triton's JIT compiled for the fused kernel in this process (one per dtype pair, optimizer,
    SAGE or plain, alignment and path is the design: none per step); None where it did not run compiled."""
    from fairseq_plugins.optim import _fused_triton

    kernel = _fused_triton._kernels.get(False)
    caches = getattr(kernel, "device_caches", None)
    if not caches:
        return None
    return sum(len(cache[0]) for cache in caches.values())


def _train(options: GpuCheckOptions, work: Path) -> list[dict]:
    pairs, vocab = (300, 50) if options.smoke else (20000, 8000)
    data_bin = train_speed.build_data_bin(work, pairs, vocab, cpu=options.smoke, workers=1 if options.smoke else 8)
    updates = options.train_updates
    return [dataclasses.asdict(train_speed.train(name, data_bin, work, updates, options.smoke, options.train_timeout))
            for name in TRAIN_RUNS]  # fmt: skip


def _num(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(title: str, header: list[str], rows: list[list]) -> list[str]:
    return ["", title, "", _row(*header), _row(*["---"] * len(header))] + [_row(*r) for r in rows]


def _find(report: dict, model: str, dtype: str, variant: str) -> dict | None:
    return next((r for r in report["steps"] if (r["model"], r["dtype"], r["variant"]) == (model, dtype, variant)), None)


def closing_line(report: dict) -> str:
    """SAGE's step over fused AdamW's on the first model's shapes: eager (synchronised and pipelined) and captured."""
    if not report["steps"]:
        return "no step measured yet"
    model = report["steps"][0]["model"]
    parts = []
    for dtype in ("float32", "bfloat16"):
        sage, adamw = _find(report, model, dtype, "sage_triton"), _find(report, model, dtype, "adamw_fused")
        if not (sage and adamw and sage["sync_ms"] and adamw["sync_ms"]):
            continue
        text = f"{dtype} {sage['ratio_to_adamw_fused']:.2f}x (pipelined {_num(sage['pipelined_ratio'])}x)"
        graph, adamw_graph = (_find(report, model, dtype, v) for v in ("sage_triton_graph", "adamw_fused_graph"))
        if graph and adamw_graph and graph["sync_ms"] and adamw_graph["sync_ms"]:
            text += f", captured {graph['sync_ms'] / adamw_graph['sync_ms']:.2f}x captured AdamW"
        parts.append(text)
    if not parts:
        return "no ratio: a variant failed (see the table)"
    return f"SAGE triton step (launch plan) / fused AdamW step on {model}: " + "; ".join(parts)


def markdown(report: dict) -> str:
    """The report's tables: step times and ratios, parity, syncs, FSDP, fairseq-train; the closing ratio last."""
    m = report["machine"]
    lines = [f"GPU check on {m['device']} (torch {m['torch']}, CUDA {m['cuda']}, Triton {m['triton']}, fairscale "
             f"{m.get('fairscale')}), {report.get('seconds')} s; parts done: {', '.join(report['done'])}."]  # fmt: skip
    lines += _steps_table(report) + _parity_table(report)
    lines += ["", f"Kernel variants compiled: {report.get('kernel_variants_compiled')}."]
    lines += _sync_table(report.get("sync")) + _fsdp_table(report.get("fsdp")) + _train_table(report["train"])
    lines += ["", report.get("closing") or closing_line(report)]
    return "\n".join(lines) + "\n"


def _steps_table(report: dict) -> list[str]:
    rows = []
    for r in report["steps"] + report.get("compiled", []):
        cells = [r["model"], r["dtype"], r["variant"]]
        if r.get("skipped") or (r["error"] and r["sync_ms"] is None):
            rows.append(cells + [f"{'skipped: ' + r['skipped'] if r.get('skipped') else 'error: ' + r['error'][:80]}"]
                        + [""] * 7)  # fmt: skip
        else:
            rows.append(cells + [_num(r["sync_ms"], 3), _num(r["ratio_to_adamw_fused"]), _num(r["pipelined_ms"], 3),
                                 _num(r["pipelined_ratio"]), _num(r["host_us"], 0), _num(r["kernel_us"], 0),
                                 _num(r["state_mb"], 0), _num(r["transient_mb"], 0)])  # fmt: skip
    return _table("Optimizer step: synchronised ms and its ratio to fused AdamW, pipelined ms per step and ratio, "
                  "host us per step call, device (kernel) us per step, MB of state, MB transient peak:",
                  ["model", "dtype", "optimizer", "sync ms", "ratio", "pipelined ms", "ratio", "host us",
                   "kernel us", "state MB", "transient MB"], rows)  # fmt: skip


def _parity_table(report: dict) -> list[str]:
    rows = []
    for p in report["parity"]:
        if "error" in p:
            rows.append([p["model"], p["dtype"], "", f"error: {p['error'][:80]}", "", "", ""])
        else:
            rows.append([p["model"], p["dtype"], p["steps"], f"{p['max_triton_vs_lists']:.2e}",
                         f"{p['max_triton_vs_float64']:.2e}", f"{p['max_lists_vs_float64']:.2e}",
                         f"{p['max_graph_vs_eager']:.2e}" if "max_graph_vs_eager" in p else "n/a"])  # fmt: skip
    return _table("Parity: largest difference of any parameter or state tensor, relative to its largest magnitude:",
                  ["model", "dtype", "steps", "plan vs list path", "plan vs float64", "list path vs float64",
                   "captured vs eager plan"], rows)  # fmt: skip


def _sync_table(sync: dict | None) -> list[str]:
    if sync is None:
        return []
    if "skipped" in sync or "error" in sync:
        return ["", f"Sync check (set_sync_debug_mode('error')): {sync.get('skipped') or sync.get('error')}."]
    rows = [[case, "yes" if v["synchronised"] else "no", v["error"] or ""] for case, v in sync.items()]
    return _table(
        "Host-device synchronisations in 5 steps after the first (torch.cuda.set_sync_debug_mode('error')):",
        ["case", "synchronised", "error"],
        rows,
    )


def _fsdp_table(fsdp_result: dict | None) -> list[str]:
    if fsdp_result is None:
        return []
    if "skipped" in fsdp_result or "error" in fsdp_result:
        return ["", f"FSDP: {fsdp_result.get('skipped') or fsdp_result.get('error')}."]
    rows = [
        [
            run,
            "ok" if v.get("ok") else "failed",
            v.get("last_update"),
            _num(v.get("last_loss"), 3),
            v.get("resumed_from") or "",
            (v.get("error") or "")[:120],
        ]
        for run, v in fsdp_result.items()
    ]
    return _table("fairseq-train --ddp-backend fully_sharded, tiny model, adam_sage (one process):",
                  ["run", "result", "last update", "loss", "resumed from", "error"], rows)  # fmt: skip


def _train_table(train: list[dict]) -> list[str]:
    if not train:
        return []
    rows = []
    for t in train:
        if t["error"]:
            rows.append([t["run"], t["updates"], f"error: {t['error'][:80]}", "", ""])
        else:
            rows.append([t["run"], t["updates"], _num(t["words_per_second"], 0), _num(t["updates_per_second"]),
                         _num(t["peak_memory_mb"], 0)])  # fmt: skip
    title = "fairseq-train transformer_iwslt_de_en, fp32, synthetic corpus (medians of the logged intervals after "
    return _table(title + "the first):", ["run", "updates", "words/s", "updates/s", "peak MB"], rows)


def main(argv: list[str] | None = None) -> dict:
    """``scripts/gpu/check_sage_gpu.py``: the check, then its Markdown on stdout (the closing ratio last)."""
    parser = argparse.ArgumentParser(description="The GPU check of SAGE's triton step (JSON + Markdown).")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few steps (the test suite's run)")
    parser.add_argument("--rounds", type=int, help="timed rounds per model and dtype (default 30; smoke 3)")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 5; smoke 1)")
    parser.add_argument("--pipeline", type=int, help="steps per pipelined measure (default 50; smoke 3)")
    parser.add_argument("--parity-steps", type=int, help="steps of the parity check (default 50; smoke 3)")
    parser.add_argument("--train-updates", type=int, help="updates per fairseq-train speed run (default 200; smoke 4)")
    parser.add_argument("--no-train", action="store_true", help="leave out the fairseq-train runs (FSDP and speed)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd AdamW (a minute or more)")
    args = parser.parse_args(argv)
    defaults = dict(rounds=3, warmup=1, pipeline=3, parity_steps=3, train_updates=4) if args.smoke else {}
    given = {k: getattr(args, k) for k in ("rounds", "warmup", "pipeline", "parity_steps", "train_updates")}
    options = GpuCheckOptions(out=args.out, smoke=args.smoke, train=not args.no_train, compile=args.compile,
                              **{**defaults, **{k: v for k, v in given.items() if v is not None}})  # fmt: skip

    def body() -> dict:
        report = run_check(options)
        print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
        print((args.out / "gpu_check.md").read_text(), end="")  # its last line: the ratio to fused AdamW
        return report

    return run_command("check_sage_gpu", body)
