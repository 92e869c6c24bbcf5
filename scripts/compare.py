#!/usr/bin/env python
"""Adam versus SAGE: train a pair of Hydra configs over N seeds, evaluate, tabulate, plot.

    python scripts/compare.py --configs demo_adam demo_sage --seeds 1 2 3 --data data-bin/demo --out runs/demo

For every (config, seed) it runs `fairseq-hydra-train --config-dir configs --config-name CONFIG` into
OUT/CONFIG/seedN (validating with BLEU during training, so the learning curves have both validation loss and BLEU),
then `scripts/evaluate.py` on the test set, and finally writes OUT/results.json, OUT/results.md and
OUT/learning_curves.png. Re-running skips finished runs (those with an eval file) and resumes unfinished ones from
their checkpoint_last.pt. With --jobs 2 two runs train at the same time, one core each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
_print_lock = threading.Lock()
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
    "MALLOC_TOP_PAD_": "536870912",
}


def say(message: str) -> None:
    with _print_lock:
        print(message, flush=True)


def read_log(path: Path) -> dict[str, list[dict]]:
    """fairseq's log file (common.log_file with common.log_format=json) -> records: train_inner, train, valid.

    The file holds one JSON object per line for each logged step, without the progress bar's tags, so the kind is
    told by the keys: valid_* (validation), train_* (end-of-epoch summary), else per-interval training statistics.
    """
    records: dict[str, list[dict]] = {"train_inner": [], "train": [], "valid": []}
    if not path.exists():
        return records
    seen = set()
    for line in path.read_text(errors="replace").splitlines():
        start = line.find('{"')
        if start < 0 or line[start:] in seen:
            # fairseq 0.12's progress_bar() adds one more FileHandler for common.log_file at every call (each epoch),
            # so from epoch k on every record is written k times: keep the first copy
            continue
        seen.add(line[start:])
        try:
            raw = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        kind = "valid" if "valid_loss" in raw else "train" if "train_loss" in raw else "train_inner"
        if kind != "train_inner" or "num_updates" in raw:
            records[kind].append({k: _number(v) for k, v in raw.items()})
    return records


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class Run:
    """One training run: OUT/TAG/seedN (TAG: the config name unless given), trained with extra Hydra overrides."""

    def __init__(
        self, args: argparse.Namespace, config: str, seed: int, overrides: list[str] = (), tag: str | None = None
    ):
        self.args, self.config, self.seed, self.overrides = args, config, seed, list(overrides)
        self.dir = args.out / (tag or config) / f"seed{seed}"
        self.name = f"{tag or config}/seed{seed}"
        self.eval_file = self.dir / "eval.test.json"

    @property
    def finished(self) -> bool:
        return self.eval_file.exists()

    def train_command(self) -> list[str]:
        prep = _prep_settings(self.args.data)
        overrides = [
            f"task.data={self.args.data.resolve()}",
            f"common.seed={self.seed}",
            f"checkpoint.save_dir={self.dir.resolve()}",
            "common.log_format=json",
            f"common.log_file={(self.dir / 'train.log').resolve()}",
            "checkpoint.no_epoch_checkpoints=true",
        ]
        if self.args.valid_bleu:
            overrides += [
                "++task.eval_bleu=true",
                # greedy, and at most 1.2 x source length + 10 tokens: an untrained model never stops on its own
                '++task.eval_bleu_args=\'{"beam": 1, "max_len_a": 1.2, "max_len_b": 10}\'',
                "++task.eval_bleu_detok=" + ("space" if prep.get("remove_bpe") == "sentencepiece" else "moses"),
                f"++task.eval_bleu_remove_bpe={prep.get('remove_bpe') or '@@ '}",
            ]
        if self.args.validate_every:
            overrides.append(f"dataset.validate_interval_updates={self.args.validate_every}")
        return [
            sys.executable,
            "-m",
            "fairseq_cli.hydra_train",
            "--config-dir",
            str(CONFIG_DIR),
            "--config-name",
            self.config,
            *overrides,
            *self.args.override,
            *self.overrides,
        ]

    def eval_command(
        self, subset: str = "test", lenpen: float | None = None, out: Path | None = None, checkpoint: Path | None = None
    ) -> list[str]:
        """scripts/evaluate.py on this run (default: its save dir's best/last checkpoint, the test set, --lenpen)."""
        return [
            sys.executable,
            str(ROOT / "scripts" / "evaluate.py"),
            "--data-bin",
            str(self.args.data),
            "--checkpoint",
            str(checkpoint or self.dir),
            "--subset",
            subset,
            "--beam",
            str(self.args.beam),
            "--lenpen",
            str(self.args.lenpen if lenpen is None else lenpen),
            "--out",
            str(out or self.eval_file),
            *(["--cpu"] if self.args.cpu else []),
        ]

    def execute(self, threads: int) -> None:
        if self.finished:
            say(f"[{self.name}] finished earlier: skipped ({self.eval_file})")
            return
        self.train(threads)
        self._stream(self.eval_command(), run_env(threads), self.dir / "eval.out")
        result = json.loads(self.eval_file.read_text())
        say(f"[{self.name}] test BLEU {result['bleu_tok']:.2f} (tokenized), sacreBLEU {result['sacrebleu']:.2f}")

    def train(self, threads: int) -> None:
        """Train (or resume) unless an earlier call completed the run."""
        self.dir.mkdir(parents=True, exist_ok=True)
        env = run_env(threads)
        # wall-clock of training (validation included), summed over resumptions; "complete" once fairseq finished
        timing_file = self.dir / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {"train_seconds": 0.0}
        if not timing.get("complete"):  # (fairseq would run one more update on a finished run)
            resumed = (self.dir / "checkpoint_last.pt").exists()
            say(f"[{self.name}] training{' (resuming)' if resumed else ''} with {threads} thread(s): {self.dir}")
            start = time.time()
            try:
                self._stream(self.train_command(), env, self.dir / "train.out")
            finally:
                timing["train_seconds"] += time.time() - start
                timing_file.write_text(json.dumps(timing))
            timing.update(complete=True, threads=threads)
            timing_file.write_text(json.dumps(timing))
            log = read_log(self.dir / "train.log")
            valid = log["valid"][-1] if log["valid"] else {}
            say(f"[{self.name}] trained in {timing['train_seconds']:.0f} s; "
                f"valid loss {valid.get('valid_loss', float('nan')):.3f}")  # fmt: skip

    def _stream(self, command: list[str], env: dict, logfile: Path) -> None:
        """Run a command, keep its output in logfile, and show fairseq's progress lines prefixed by the run."""
        with open(logfile, "a") as out:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for line in proc.stdout:
                out.write(line)
                status = self.args.verbose and line.rstrip() or _progress(line)
                if status:
                    say(f"[{self.name}] {status}")
            if proc.wait() != 0:
                raise RuntimeError(
                    f"[{self.name}] failed (exit {proc.returncode}): {' '.join(command[:6])} ...; see {logfile}"
                )

    def summary(self) -> dict:
        result = json.loads(self.eval_file.read_text())
        return {
            "config": self.config,
            "seed": self.seed,
            "bleu_tok": result["bleu_tok"],
            "sacrebleu": result["sacrebleu"],
            "chrf": result.get("chrf"),
            "bp": result.get("bp"),
            "sacrebleu_signature": result.get("sacrebleu_signature"),
            **self.training_summary(),
        }

    def training_summary(self) -> dict:
        """What fairseq's log and timing.json say of the training: losses, updates, time, speed, validation curve."""
        log = read_log(self.dir / "train.log")
        inner, valid = log["train_inner"], log["valid"]
        wps = [r["wps"] for r in inner if isinstance(r.get("wps"), float)]
        wps = wps or [r["train_wps"] for r in log["train"] if isinstance(r.get("train_wps"), float)]
        timing_file = self.dir / "timing.json"
        timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        return {
            "best_valid_loss": min((r["valid_loss"] for r in valid), default=None),
            "final_valid_loss": valid[-1]["valid_loss"] if valid else None,
            "updates": int(
                max([r["num_updates"] for r in inner] + [r["train_num_updates"] for r in log["train"]], default=0)
            ),  # fmt: skip
            "train_wall_s": timing.get("train_seconds"),
            "words_per_s": statistics.median(wps) if wps else None,
            "curve": [
                {
                    "update": int(r.get("valid_num_updates", 0)),
                    "valid_loss": r.get("valid_loss"),
                    "valid_bleu": r.get("valid_bleu"),
                }
                for r in valid
            ],
        }


def run_env(threads: int) -> dict[str, str]:
    """The environment of a training or evaluation subprocess: its thread count, unbuffered output, glibc malloc."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    # keep freed tensor memory in the process instead of returning it to the OS after every step: on this
    # project's CPU machine it cut the system time of a demo training run from 12.4 s to 1.5 s per 30 updates
    for key, value in MALLOC_ENV.items():
        env.setdefault(key, value)
    return env


def _progress(line: str) -> str | None:
    """A short status from one of fairseq's JSON progress lines (training statistics or validation), else None."""
    start = line.find('{"')
    if start < 0:
        return None
    try:
        rec = json.loads(line[start:])
    except json.JSONDecodeError:
        return None
    if "valid_loss" in rec:
        bleu = f", BLEU {rec['valid_bleu']}" if "valid_bleu" in rec else ""
        return f"update {rec.get('valid_num_updates')}: valid loss {rec['valid_loss']}{bleu}"
    if "loss" in rec and "num_updates" in rec:
        sage = (
            f", SAGE alpha {rec['sage_alpha']}, mean multiplier {rec.get('sage_r_mean')}" if "sage_alpha" in rec else ""
        )
        return f"update {rec['num_updates']}: loss {rec['loss']}, lr {rec.get('lr')}, {rec.get('wps')} words/s{sage}"
    return None


def _prep_settings(data: Path) -> dict:
    prep = data / "prep.json"
    return json.loads(prep.read_text()) if prep.exists() else {}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


METRICS = [
    ("bleu_tok", "tok. BLEU", 2),
    ("sacrebleu", "sacreBLEU", 2),
    ("chrf", "chrF", 2),
    ("bp", "BP", 3),
    ("best_valid_loss", "best valid loss", 3),
    ("train_wall_s", "train time (s)", 0),
    ("words_per_s", "words/s", 0),
]


def aggregate(runs: list[dict], configs: list[str]) -> dict:
    table = {}
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        table[config] = {"seeds": [r["seed"] for r in mine]}
        for key, _, _ in METRICS:
            mean, std = mean_std([r[key] for r in mine])
            table[config][key] = {"mean": mean, "std": std}
    return table


def _cell(entry: dict, digits: int) -> str:
    if entry["mean"] is None:
        return "n/a"
    text = f"{entry['mean']:.{digits}f}"
    return text + (f" ± {entry['std']:.{digits}f}" if entry["std"] is not None else "")


def write_markdown(path: Path, table: dict, runs: list[dict], args: argparse.Namespace) -> str:
    head = "| config | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [f"# {' vs '.join(table)} on {args.data}", "", head, "|" + "---|" * (len(METRICS) + 2)]
    for config, row in table.items():
        cells = [_cell(row[key], digits) for key, _, digits in METRICS]
        lines.append(f"| {config} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± standard deviation over seeds (no ± with one seed). Test set, beam "
        f"{args.beam}, length penalty {args.lenpen}; BP is sacreBLEU's brevity penalty.",
        "",
    ]
    signatures = sorted({r["sacrebleu_signature"] for r in runs if r.get("sacrebleu_signature")})
    lines += [f"sacreBLEU signature: `{s}`" for s in signatures]
    lines += [
        "",
        "| config | seed | tok. BLEU | sacreBLEU | BP | best valid loss | updates |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['config']} | {r['seed']} | {r['bleu_tok']:.2f} | {r['sacrebleu']:.2f} | "
            f"{(r['bp'] or float('nan')):.3f} | {(r['best_valid_loss'] or float('nan')):.3f} | {r['updates']} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(path: Path, runs: list[dict], configs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(configs, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for r in runs:
        curve = [c for c in r["curve"] if c["valid_loss"] is not None]
        label = f"{r['config']} (seed {r['seed']})"
        ax_loss.plot(
            [c["update"] for c in curve],
            [c["valid_loss"] for c in curve],
            marker="o",
            color=colors[r["config"]],
            label=label,
        )
        bleu = [c for c in curve if isinstance(c.get("valid_bleu"), float)]
        ax_bleu.plot(
            [c["update"] for c in bleu],
            [c["valid_bleu"] for c in bleu],
            marker="o",
            color=colors[r["config"]],
            label=label,
        )
    ax_loss.set(xlabel="update", ylabel="validation loss (label-smoothed, base 2)", title="validation loss")
    ax_bleu.set(xlabel="update", ylabel="validation BLEU (greedy, sacreBLEU)", title="validation BLEU")
    for ax in (ax_loss, ax_bleu):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["demo_adam", "demo_sage"],
        help="config names in configs/ (default: demo_adam demo_sage)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1], help="seeds (default: 1)")
    parser.add_argument("--data", type=Path, required=True, help="the prepared data-bin folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (runs, results, plot)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--lenpen", type=float, default=1.0)
    parser.add_argument("--validate-every", type=int, default=0, help="also validate every N updates")
    parser.add_argument("--no-valid-bleu", dest="valid_bleu", action="store_false", help="validation loss only")
    parser.add_argument("--cpu", action="store_true", help="evaluate on the CPU")
    parser.add_argument("--verbose", action="store_true", help="show every line of fairseq's output")
    parser.add_argument("override", nargs="*", help="Hydra overrides for every run, e.g. optimization.max_update=100")
    args = parser.parse_args(argv)
    args.data, args.out = args.data.absolute(), args.out.absolute()  # the runs start in the repository root
    for config in args.configs:
        if not (CONFIG_DIR / f"{config}.yaml").exists():
            parser.error(f"--configs: no config {CONFIG_DIR / config}.yaml")
    if not any(args.data.glob("dict.*.txt")):
        parser.error(f"--data: {args.data} is not a fairseq data-bin (no dict.*.txt); prepare it with data_prep/")
    args.out.mkdir(parents=True, exist_ok=True)

    # interleave the optimizers (seed 1 of each, then seed 2 ...), so an interrupted comparison stays balanced
    runs = [Run(args, config, seed) for seed in args.seeds for config in args.configs]
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(run.execute, threads) for run in runs]:
            future.result()

    summaries = [run.summary() for run in runs]
    table = aggregate(summaries, args.configs)
    results = {
        "data": str(args.data),
        "configs": args.configs,
        "seeds": args.seeds,
        "beam": args.beam,
        "lenpen": args.lenpen,
        "overrides": args.override,
        "table": table,
        "runs": summaries,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    text = write_markdown(args.out / "results.md", table, summaries, args)
    plot(args.out / "learning_curves.png", summaries, args.configs)
    say("\n" + text)
    say(f"wrote {args.out / 'results.md'}, {args.out / 'results.json'}, {args.out / 'learning_curves.png'}")
    return results


if __name__ == "__main__":
    main()
