"""GPU check: SAGE training curves in fp16 / memory-efficient fp16 / AMP / bf16 against fp32.

Trains the tiny transformer of the test suite on its generated corpus with ``--optimizer adam_sage`` for a fixed
number of updates in each precision mode, through the real ``fairseq-train``, and writes the per-update losses, the
largest deviation from the fp32 curve, and the device name to ``OUT/precision.json`` (plus ``precision.png``).

    python scripts/gpu/check_precision.py --out runs/gpu_precision --updates 300

Needs a CUDA GPU (``--allow-cpu`` runs the plumbing on CPU with the modes that fairseq supports there). fairseq
0.12.2's ``--bf16`` implies ``--tpu`` and needs torch_xla: where that fails, the mode is recorded as refused with
fairseq's message rather than hidden. Each mode records the device fairseq trained on, read from its log
(``trained_on``); on a machine with a GPU, a run that trained on the CPU is an error, never a curve. (Until
2026-12-04 the fairseq processes were started with the GPU hidden, so the first run on a GPU, an H200, measured the CPU:
its fp16 mode failed with "No CUDA GPUs are available".)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sage_toolkit.atomic import savefig_atomic, write_atomic
from sage_toolkit.tiny_fairseq import make_tiny_corpus, preprocess, run_cli, train_args, train_log, trained_on

MODES = {
    "fp32": [],
    "fp16": ["--fp16"],
    "memory_efficient_fp16": ["--memory-efficient-fp16"],
    "amp": ["--amp"],
    "bf16": ["--bf16"],
}
CPU_MODES = ("fp32", "memory_efficient_fp16")  # what fairseq 0.12.2 can run without CUDA


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for precision.json and precision.png")
    parser.add_argument("--updates", type=int, default=300, help="updates per mode (default 300)")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    parser.add_argument("--train-lines", type=int, default=2000, help="size of the generated training corpus")
    parser.add_argument("--allow-cpu", action="store_true", help="run the CPU-capable modes without a GPU")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        parser.error("no CUDA device: this check is for a GPU (use --allow-cpu for a CPU smoke run)")
    modes = args.modes if cuda else [m for m in args.modes if m in CPU_MODES]

    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    results = {"device": device, "torch": torch.__version__, "updates": args.updates, "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data_bin = preprocess(make_tiny_corpus(Path(tmp) / "raw", n_train=args.train_lines), Path(tmp) / "bin")
        for mode in modes:
            extra = MODES[mode] + ([] if cuda else ["--cpu"]) + ["--dropout", "0"]
            argv_ = train_args(data_bin, Path(tmp) / mode, ["--optimizer", "adam_sage"], args.updates, extra)
            if cuda:
                argv_.remove("--cpu")
            proc = run_cli("train", argv_, check=False, cuda=cuda)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                results["modes"][mode] = {"status": "refused", "error": last}
                print(f"{mode:>24}: refused by fairseq: {last}")
                continue
            used = trained_on(proc)
            if cuda and used == "cpu":  # a curve from the CPU must never pass for the GPU's
                results["modes"][mode] = {"status": "error", "error": "fairseq trained on the CPU, not the GPU"}
                print(f"{mode:>24}: error: fairseq trained on the CPU, not the GPU")
                continue
            losses = [r["loss"] for r in train_log(proc)]
            results["modes"][mode] = {"status": "ok", "trained_on": used, "losses": losses}
            print(f"{mode:>24}: loss {losses[0]:.3f} -> {losses[-1]:.3f} ({used})")
    reference = results["modes"].get("fp32", {}).get("losses")
    for mode, entry in results["modes"].items():
        if entry["status"] == "ok" and reference and mode != "fp32":
            n = min(len(reference), len(entry["losses"]))
            entry["max_abs_diff_vs_fp32"] = max(
                abs(a - b) for a, b in zip(reference[:n], entry["losses"][:n], strict=True)
            )
            entry["final_diff_vs_fp32"] = entry["losses"][n - 1] - reference[n - 1]
            print(f"{mode:>24}: max |loss - fp32 loss| = {entry['max_abs_diff_vs_fp32']:.4f}")
    write_atomic(args.out / "precision.json", json.dumps(results, indent=1))
    _plot(results, args.out / "precision.png")
    print(f"wrote {args.out / 'precision.json'} ({device})")
    return results


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, entry in results["modes"].items():
        if entry["status"] == "ok":
            ax.plot(range(1, len(entry["losses"]) + 1), entry["losses"], label=mode)
    ax.set(xlabel="update", ylabel="training loss", title=f"adam_sage precision modes on {results['device']}")
    ax.legend()
    fig.tight_layout()
    savefig_atomic(fig, path, dpi=120)
    plt.close(fig)
