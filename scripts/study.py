#!/usr/bin/env python
"""A tuned Adam-versus-SAGE study from one spec file: grid on validation, seeds, length penalty, test table, plots.

    python scripts/study.py studies/multi30k_de_en.yaml [--out runs/multi30k_de_en] [--jobs 2]

The spec (YAML; studies/multi30k_de_en.yaml is the one RESULTS.md reports) names the data-bin, a Hydra config per
optimizer and, per optimizer, a grid of settings (each a list of Hydra overrides). The protocol keeps the test sets
out of every decision:

1. Grid: every setting trained with ``tune_seed``; each final checkpoint (``checkpoint_last.pt``: every run has the
   same update budget) translated on the validation set, beam ``beam``, length penalty 1.0. The setting with the highest
   validation sacreBLEU wins (ties: the lower final validation loss).
2. Seeds: the winning setting trained with every seed of ``seeds`` (the tune seed's run is the grid's, reused).
3. Length penalty: each seed's model translates the validation set with every value of ``lenpens``; per optimizer the
   value with the highest mean validation sacreBLEU over its seeds is chosen.
4. Test: each seed's model translates every subset of ``test_subsets`` with length penalty 1.0 and with the chosen one.

Outputs in OUT: one folder per run (``OPTIMIZER/SETTING/seedN``: fairseq's log and checkpoints, ``eval.SUBSET.lpX.json``
from scripts/evaluate.py), ``study.json`` (everything measured), ``study.md`` (the tables) and ``learning_curves.png``,
``grid_curves.png``, ``lenpen.png``. Re-running resumes: finished trainings and evaluations are read, not redone (a
training that completed is never trained further).

Like scripts/compare.py (whose runs and process handling it uses): SIGINT/SIGTERM stop every child and start nothing
further (exit 128 + the signal, one line on stderr); the output folder and every run folder are locked while written
(another runner refuses, naming the folder and the PID); a run that fails outside the grid stops the study with its
name, log and the end of its error (exit 1). A grid run that fails is recorded in its failed.json and loses the grid.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
from concurrent.futures import Future, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _compare_module():
    """scripts/compare.py (scripts/ is not a package; loaded by path): its Run trains, its log reader reads."""
    name = "fairseq_sage_compare"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("compare.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


compare = _compare_module()
SPEC_KEYS = {"data", "out", "jobs", "beam", "tune_seed", "seeds", "lenpens", "test_subsets", "subset_names",
             "optimizers", "overrides", "validate_every", "valid_bleu", "description"}  # fmt: skip


class StudyError(compare.RunnerError):
    """A user-facing error in the spec or the data; the message names the key or file at fault."""


def load_spec(path: Path) -> dict:
    from omegaconf import OmegaConf

    if not path.is_file():
        raise StudyError(f"study spec {path}: no such file")
    spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise StudyError(f"study spec {path}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    for key in ("data", "optimizers", "seeds"):
        if key not in spec:
            raise StudyError(f"study spec {path}: '{key}' is missing")
    spec.setdefault("jobs", 1)
    spec.setdefault("beam", 5)
    spec.setdefault("lenpens", [1.0])
    spec.setdefault("test_subsets", ["test"])
    spec.setdefault("subset_names", {})
    spec.setdefault("overrides", [])
    spec.setdefault("validate_every", 0)
    spec.setdefault("valid_bleu", True)
    spec.setdefault("tune_seed", spec["seeds"][0])
    if spec["tune_seed"] not in spec["seeds"]:
        raise StudyError(f"study spec {path}: tune_seed {spec['tune_seed']} is not one of seeds {spec['seeds']}")
    if 1.0 not in spec["lenpens"]:
        raise StudyError(f"study spec {path}: lenpens {spec['lenpens']} must include 1.0 (the grid's and the baseline)")
    for name, opt in spec["optimizers"].items():
        if not isinstance(opt, dict) or "config" not in opt or not opt.get("grid"):
            raise StudyError(f"study spec {path}: optimizers.{name} needs 'config' and a non-empty 'grid'")
        if not (compare.CONFIG_DIR / f"{opt['config']}.yaml").exists():
            raise StudyError(
                f"study spec {path}: optimizers.{name}.config: no {compare.CONFIG_DIR / opt['config']}.yaml"
            )
        for setting, overrides in opt["grid"].items():
            if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
                raise StudyError(
                    f"study spec {path}: optimizers.{name}.grid.{setting} must be a list of Hydra overrides KEY=VALUE"
                )
    sizes = {len(opt["grid"]) for opt in spec["optimizers"].values()}
    if len(sizes) != 1:
        raise StudyError(f"study spec {path}: every optimizer needs a grid of the same size (found {sorted(sizes)})")
    return spec


class Study:
    def __init__(self, spec: dict, out: Path, jobs: int, cpu: bool):
        self.spec, self.out = spec, out
        self.data = (ROOT / spec["data"]).resolve() if not Path(spec["data"]).is_absolute() else Path(spec["data"])
        if not any(self.data.glob("dict.*.txt")):
            raise StudyError(f"data {self.data}: not a fairseq data-bin (no dict.*.txt); prepare it with data_prep/")
        self.jobs = max(1, jobs)
        self.threads = max(1, (os.cpu_count() or 1) // self.jobs)
        self.cpu = cpu
        # what compare.Run reads from its argparse namespace
        self.run_args = argparse.Namespace(
            data=self.data, out=out, override=list(spec["overrides"]), valid_bleu=spec["valid_bleu"],
            validate_every=spec["validate_every"], verbose=False, beam=spec["beam"], lenpen=1.0, cpu=cpu,
        )  # fmt: skip
        self.pool = None  # the worker pool, while execute() runs

    # -- units of work (each runs in the pool) ------------------------------------------------------------------

    def run(self, optimizer: str, setting: str, seed: int):
        opt = self.spec["optimizers"][optimizer]
        return compare.Run(self.run_args, opt["config"], seed, opt["grid"][setting], tag=f"{optimizer}/{setting}")

    def evaluate(self, run, subset: str, lenpen: float) -> dict:
        """scripts/evaluate.py on the final checkpoint; cached in the run's folder."""
        compare.SUPERVISOR.check()  # a stopping study starts nothing (and creates no run folder)
        out = run.dir / f"eval.{subset}.lp{lenpen:g}.json"
        with run.locked():
            if not out.exists():
                command = run.eval_command(subset, lenpen, out, checkpoint=run.dir / "checkpoint_last.pt")
                run._stream(command, compare.run_env(self.threads), run.dir / "eval.out")
        return json.loads(out.read_text())

    def train_and_validate(self, run, tolerate_failure: bool = False) -> dict:
        """Train, then translate the validation set. A grid run that fails (a setting that diverges: fairseq stops on
        NaN/Inf gradients) is recorded in failed.json and loses the grid instead of ending the study."""
        compare.SUPERVISOR.check()
        failed = run.dir / "failed.json"
        if failed.exists():
            return json.loads(failed.read_text())
        try:
            run.train(self.threads)
        except compare.RunFailed as e:  # not an interruption (compare.Stopped): that is never recorded as a failure
            if not tolerate_failure:
                raise
            compare.say(f"[{run.name}] FAILED: {e.what} exited with status {e.returncode}; recorded in {failed}")
            compare.complain(f"study: {e}")
            record = {"failed": str(e), "sacrebleu": None, "bleu_tok": None, "bp": None}
            compare.write_atomic(failed, json.dumps(record))
            return record
        result = self.evaluate(run, "valid", 1.0)
        compare.say(f"[{run.name}] valid sacreBLEU {result['sacrebleu']:.2f} (beam {self.spec['beam']}, lenpen 1)")
        return result

    # -- the protocol ----------------------------------------------------------------------------------------------

    def optimizer_track(self, optimizer: str, grid_futures: dict[str, Future]) -> dict:
        """Steps 2-4 for one optimizer, once its grid is done (runs in its own thread, not in the pool)."""
        spec = self.spec
        grid = {setting: future.result() for setting, future in grid_futures.items()}
        scores = {}
        for setting in grid:
            run = self.run(optimizer, setting, spec["tune_seed"])
            scores[setting] = {
                "valid_sacrebleu": grid[setting]["sacrebleu"],
                "valid_bleu_tok": grid[setting]["bleu_tok"],
                "valid_bp": grid[setting]["bp"],
                "final_valid_loss": run.training_summary()["final_valid_loss"],
                "overrides": spec["optimizers"][optimizer]["grid"][setting],
                "failed": grid[setting].get("failed"),
            }
        ok = [s for s in scores if not scores[s]["failed"]]
        if not ok:
            raise StudyError(f"[{optimizer}] every grid setting failed; see {self.out / optimizer}/*/train.out")
        best = max(ok, key=lambda s: (scores[s]["valid_sacrebleu"], -(scores[s]["final_valid_loss"] or math.inf)))
        compare.say(f"[{optimizer}] best setting on valid: {best} ({scores[best]['valid_sacrebleu']:.2f})")
        runs = [self.run(optimizer, best, seed) for seed in spec["seeds"]]
        trained = [self.pool.submit(self.train_and_validate, run) for run in runs]
        for future in as_completed(trained):
            future.result()  # the first failure ends the study (at once, not after the runs before it)
        sweeps = {
            (run.seed, lp): self.pool.submit(self.evaluate, run, "valid", lp) for run in runs for lp in spec["lenpens"]
        }
        mean_by_lenpen = {
            lp: statistics.mean(sweeps[(run.seed, lp)].result()["sacrebleu"] for run in runs) for lp in spec["lenpens"]
        }
        lenpen = max(spec["lenpens"], key=lambda lp: (mean_by_lenpen[lp], -abs(lp - 1.0)))
        compare.say(f"[{optimizer}] length penalty on valid: {lenpen:g} (mean sacreBLEU {mean_by_lenpen[lenpen]:.2f})")
        tests = {
            (run.seed, subset, lp): self.pool.submit(self.evaluate, run, subset, lp)
            for run in runs
            for subset in spec["test_subsets"]
            for lp in sorted({1.0, lenpen})
        }
        seeds = []
        for run in runs:
            entry = {"seed": run.seed, "dir": str(run.dir), **run.training_summary()}
            entry["valid"] = {f"{lp:g}": _scores(sweeps[(run.seed, lp)].result()) for lp in spec["lenpens"]}
            entry["test"] = {
                subset: {f"{lp:g}": _scores(tests[(run.seed, subset, lp)].result()) for lp in sorted({1.0, lenpen})}
                for subset in spec["test_subsets"]
            }
            seeds.append(entry)
        return {
            "config": spec["optimizers"][optimizer]["config"],
            "grid": scores,
            "best_setting": best,
            "overrides": spec["optimizers"][optimizer]["grid"][best],
            "valid_sacrebleu_by_lenpen": {f"{lp:g}": v for lp, v in mean_by_lenpen.items()},
            "lenpen": lenpen,
            "seeds": seeds,
            "grid_curves": {s: self.run(optimizer, s, spec["tune_seed"]).training_summary()["curve"] for s in grid},
        }

    def execute(self) -> dict:
        with compare.worker_pool(self.jobs) as self.pool:
            return self._execute()

    def _execute(self) -> dict:
        spec = self.spec
        names = list(spec["optimizers"])
        settings = {name: list(spec["optimizers"][name]["grid"]) for name in names}
        # interleave the optimizers (first setting of each, then the second ...): both grids finish at about one time
        grid_futures: dict[str, dict[str, Future]] = {name: {} for name in names}
        for i in range(max(len(s) for s in settings.values())):
            for name in names:
                if i < len(settings[name]):
                    run = self.run(name, settings[name][i], spec["tune_seed"])
                    grid_futures[name][settings[name][i]] = self.pool.submit(self.train_and_validate, run, True)
        with compare.worker_pool(len(names)) as tracks:
            futures = {name: tracks.submit(self.optimizer_track, name, grid_futures[name]) for name in names}
            for future in as_completed(futures.values()):
                future.result()  # the first failure ends the study: the other track's children are stopped
            results = {name: future.result() for name, future in futures.items()}
        return results


def _scores(result: dict) -> dict:
    keys = ("bleu_tok", "sacrebleu", "chrf", "bp", "sys_len", "ref_len", "sacrebleu_signature")
    return {k: result.get(k) for k in keys}


# -- report --------------------------------------------------------------------------------------------------------


def _mean_std(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _difference(a: list[float], b: list[float], digits: int) -> str:
    """mean(b) - mean(a) ± the standard error of that difference (two independent samples)."""
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return f"{statistics.mean(b) - statistics.mean(a):+.{digits}f} ± {se:.{digits}f}"


def report(spec: dict, results: dict) -> str:
    names = list(results)
    lines = [f"# {spec.get('description', 'Adam vs SAGE')}", ""]
    lines += [f"## Grid (seed {spec['tune_seed']}, validation, beam {spec['beam']}, lenpen 1)", ""]
    lines += ["| optimizer | setting | overrides | valid sacreBLEU | valid tok. BLEU | BP | final valid loss |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for name in names:
        for setting, g in results[name]["grid"].items():
            if g["failed"]:
                lines.append(f"| {name} | {setting} | `{' '.join(g['overrides'])}` | failed | | | |")
                continue
            mark = " **(best)**" if setting == results[name]["best_setting"] else ""
            lines.append(
                f"| {name} | {setting}{mark} | `{' '.join(g['overrides'])}` | {g['valid_sacrebleu']:.2f} | "
                f"{g['valid_bleu_tok']:.2f} | {g['valid_bp']:.3f} | {g['final_valid_loss']:.3f} |"
            )
    lines += ["", "## Length penalty (mean validation sacreBLEU over the seeds)", ""]
    lenpens = [f"{lp:g}" for lp in spec["lenpens"]]
    lines += ["| optimizer | " + " | ".join(f"lenpen {lp}" for lp in lenpens) + " | chosen |"]
    lines += ["|---|" + "---|" * (len(lenpens) + 1)]
    for name in names:
        by = results[name]["valid_sacrebleu_by_lenpen"]
        lines.append(
            f"| {name} | " + " | ".join(f"{by[lp]:.2f}" for lp in lenpens) + f" | {results[name]['lenpen']:g} |"
        )
    for label, which in (("tuned length penalty", "tuned"), ("length penalty 1.0", "1")):
        lines += ["", f"## Test, {label} (mean ± std over {len(spec['seeds'])} seeds)", ""]
        head = "| optimizer | lenpen | final valid loss |"
        for subset in spec["test_subsets"]:
            shown = spec["subset_names"].get(subset, subset)
            head += f" {shown} tok. BLEU | {shown} sacreBLEU | {shown} BP |"
        lines += [head, "|" + "---|" * (3 + 3 * len(spec["test_subsets"]))]
        columns = {}  # name -> the per-seed values of every column, for the difference row
        for name in names:
            lp = f"{results[name]['lenpen']:g}" if which == "tuned" else "1"
            seeds = results[name]["seeds"]
            values = [([s["final_valid_loss"] for s in seeds], 3)]
            for subset in spec["test_subsets"]:
                cells = [s["test"][subset][lp] for s in seeds]
                values += [
                    ([c[key] for c in cells], digits) for key, digits in (("bleu_tok", 2), ("sacrebleu", 2), ("bp", 3))
                ]
            columns[name] = values
            lines.append(f"| {name} | {lp} | " + " | ".join(_mean_std(v, d) for v, d in values) + " |")
        if len(names) == 2 and all(len(results[n]["seeds"]) > 1 for n in names):
            first, second = names
            cells = [_difference(a, b, d) for (a, d), (b, _) in zip(columns[first], columns[second], strict=True)]
            lines.append(f"| {second} − {first} | | " + " | ".join(cells) + " |")
            lines += [
                "",
                "Last row: difference of the means ± its standard error, sqrt(s1²/n1 + s2²/n2) (seeds unpaired).",
            ]
    lines += ["", "## Per seed (tuned length penalty)", ""]
    head = "| optimizer | seed | final valid loss | valid sacreBLEU |"
    for subset in spec["test_subsets"]:
        shown = spec["subset_names"].get(subset, subset)
        head += f" {shown} tok. BLEU | {shown} sacreBLEU | {shown} BP |"
    lines += [head + " train time (s) |", "|" + "---|" * (5 + 3 * len(spec["test_subsets"]))]
    for name in names:
        lp = f"{results[name]['lenpen']:g}"
        for s in results[name]["seeds"]:
            row = f"| {name} | {s['seed']} | {s['final_valid_loss']:.3f} | {s['valid'][lp]['sacrebleu']:.2f} |"
            for subset in spec["test_subsets"]:
                c = s["test"][subset][lp]
                row += f" {c['bleu_tok']:.2f} | {c['sacrebleu']:.2f} | {c['bp']:.3f} |"
            lines.append(row + f" {s['train_wall_s'] or float('nan'):.0f} |")
    signatures = sorted(
        {c["sacrebleu_signature"] for n in names for s in results[n]["seeds"] for t in s["test"].values()
         for c in t.values() if c.get("sacrebleu_signature")}
    )  # fmt: skip
    lines += [
        "",
        "Tokenized BLEU: fairseq's scorer on the lowercased Moses-tokenised text (the Multi30k/IWSLT'14 way);",
    ]
    lines += [
        "sacreBLEU on detokenised output. BP: sacreBLEU's brevity penalty. Validation loss: label-smoothed, base 2."
    ]
    lines += [f"sacreBLEU signature: `{s}`" for s in signatures]
    return "\n".join(lines) + "\n"


def plots(out: Path, spec: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the final runs' validation curves, drawn as compare.py draws a comparison: one colour per optimizer
    labels = {name: f"{name} {r['best_setting']}" for name, r in results.items()}
    finals = [{"config": labels[name], **s} for name, r in results.items() for s in r["seeds"]]
    compare.plot(out / "learning_curves.png", finals, list(labels.values()))

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items(), strict=True):
        for setting, curve in r["grid_curves"].items():
            ax.plot([c["update"] for c in curve], [c["valid_loss"] for c in curve], marker=".", label=setting)
        ax.set(xlabel="update", ylabel="validation loss", title=f"{name} grid (seed {spec['tune_seed']})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    compare.savefig_atomic(fig, out / "grid_curves.png", dpi=110)
    plt.close(fig)

    colors = dict(zip(results, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in results.items():
        lps = [float(k) for k in r["valid_sacrebleu_by_lenpen"]]
        for s in r["seeds"]:
            ax.plot(lps, [s["valid"][f"{lp:g}"]["sacrebleu"] for lp in lps], color=colors[name], alpha=0.4)
        ax.plot(lps, list(r["valid_sacrebleu_by_lenpen"].values()), color=colors[name], lw=2.5, label=f"{name} mean")
    ax.set(xlabel="length penalty", ylabel=f"validation sacreBLEU (beam {spec['beam']})", title="length penalty")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    compare.savefig_atomic(fig, out / "lenpen.png", dpi=110)
    plt.close(fig)


def list_checkpoints(out: Path) -> dict:
    """The final models of a finished study, as analyze_redundancy.py's NAME=PATH arguments (printed on one line)."""
    summary_file = out / "study.json"
    if not summary_file.exists():
        raise StudyError(f"{summary_file}: no finished study there (run scripts/study.py SPEC first)")
    results = json.loads(summary_file.read_text())["results"]
    entries = {
        f"{name}/seed{s['seed']}": str(Path(s["dir"]) / "checkpoint_last.pt") for name, r in results.items()
        for s in r["seeds"]
    }  # fmt: skip
    print(" ".join(f"{name}={path}" for name, path in entries.items()))
    return entries


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="study spec (YAML), e.g. studies/multi30k_de_en.yaml")
    parser.add_argument("--out", type=Path, help="output folder (default: the spec's 'out')")
    parser.add_argument("--jobs", type=int, help="trainings/evaluations at the same time (default: the spec's)")
    parser.add_argument("--gpu", dest="cpu", action="store_false", help="translate on the GPU (default: CPU)")
    parser.add_argument(
        "--list-checkpoints",
        action="store_true",
        help="print OPTIMIZER/seedN=PATH of the finished study's final checkpoints (for analyze_redundancy.py)",
    )
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        out = (args.out or Path(spec.get("out") or parser.error("--out: the spec has no 'out'"))).absolute()
        if args.list_checkpoints:
            return list_checkpoints(out)
        out.mkdir(parents=True, exist_ok=True)
        study = Study(spec, out, args.jobs or spec["jobs"], args.cpu)
    except StudyError as e:
        parser.error(str(e))
    with compare.runner_session("study", out):
        results = study.execute()
        summary = {"spec": spec, "spec_file": str(args.spec), "results": results}
        compare.write_atomic(out / "study.json", json.dumps(summary, indent=1))
        text = report(spec, results)
        compare.write_atomic(out / "study.md", text)
        plots(out, spec, results)
    compare.say("\n" + text)
    compare.say(f"wrote {out / 'study.md'}, {out / 'study.json'}, learning_curves.png, grid_curves.png, lenpen.png")
    return summary


if __name__ == "__main__":
    main()
