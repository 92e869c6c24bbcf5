"""The compute a study used: each run's training and evaluation wall time and thread counts as the jobs recorded them
(``timing.json``, each evaluation's JSON; read from the record or the run folder), and study.md's table of them."""

from __future__ import annotations

from sage_toolkit.study.store import StudyRuns


def compute(study: StudyRuns, results: dict) -> dict:
    """The job time of the study's runs (each grid setting at the tune seed, each seed of each winner; a run the
    spec shares with another counted here too): {"runs": {run: {"optimizer", "train_s",
    "train_threads", "evaluation_s", "evaluations", "evaluation_threads"}}}; the thread counts are the ones the jobs
    recorded (None where a job did not record it), not this machine's. Wall seconds of each job as measured
    (training: the runner's timing of its segments; evaluation: sage-evaluate's ``elapsed_s``); the analyses'
    (redundancy, token loss) are not measured."""
    runs = {}
    for optimizer, result in results.items():
        settings = [(setting, study.spec.tune_seed) for setting in result["grid"]]
        settings += [(result["best_setting"], entry["seed"]) for entry in result["seeds"]]
        for setting, seed in settings:
            run = study.run(optimizer, setting, seed)
            if run.name in runs:
                continue
            evaluations, training = study.evaluation_results(run), study.training_summary(run)
            # an evaluation written before sage-evaluate recorded its time (or thread count) makes the run's None
            seconds = [e.get("elapsed_s") for e in evaluations]
            threads = [e.get("threads") for e in evaluations]
            runs[run.name] = {
                "optimizer": optimizer,
                "train_s": training["train_wall_s"],
                "train_threads": training.get("train_threads"),
                "evaluation_s": None if None in seconds else float(sum(seconds)),
                "evaluations": len(evaluations),
                "evaluation_threads": None if None in threads else sorted(set(threads)),
            }
    return {"runs": runs}


def _threads(entries) -> str:
    """What the jobs recorded of their thread counts: "trainings with 1 thread each, evaluations with 1 thread each",
    naming every count seen and how many jobs did not record theirs."""

    def phrase(what: str, counts: list) -> str:
        missing = counts.count(None)
        seen = sorted({n for c in counts if c is not None for n in (c if isinstance(c, list) else [c])})
        if not seen:
            return f"{what}' thread counts not recorded"
        plural = "s" if seen != [1] else ""
        text = f"{what} with {' or '.join(map(str, seen))} thread{plural} each"
        return text + (f" ({missing} of {len(counts)} runs did not record it)" if missing else "")

    entries = list(entries)
    return ", ".join([
        phrase("trainings", [e.get("train_threads") for e in entries]),
        phrase("evaluations", [e.get("evaluation_threads") for e in entries]),
    ])  # fmt: skip


def compute_table(compute: dict) -> list[str]:
    """The job-time table: per optimizer and in all, the runs, their training and evaluation hours."""
    groups: dict[str, list[dict]] = {}
    for entry in compute["runs"].values():
        groups.setdefault(entry["optimizer"], []).append(entry)
    groups["all"] = list(compute["runs"].values())

    def hours(entries: list[dict], key: str) -> float | None:
        values = [e[key] for e in entries]
        return None if None in values else sum(values) / 3600

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = ["", "## Compute", "",
             "| optimizer | runs | training (h) | evaluations | evaluation (h) | training + evaluation (h) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, entries in groups.items():
        train, evaluation = hours(entries, "train_s"), hours(entries, "evaluation_s")
        total = None if train is None or evaluation is None else train + evaluation
        count = sum(e["evaluations"] for e in entries)
        lines.append(f"| {name} | {len(entries)} | {cell(train)} | {count} | {cell(evaluation)} | {cell(total)} |")
    note = (
        f"Wall hours of the jobs ({_threads(compute['runs'].values())}; jobs side by side: the machine's wall time is "
        "shorter), over the runs the study reads (each grid setting at the tune seed, each seed of each winner; a run "
        "reused from another spec counted too): training as the runner timed it (resumptions and killed segments "
        "summed), evaluations (translation, scoring, checkpoint averaging) as sage-evaluate timed them. The redundancy "
        "and token-loss analyses are not timed."
    )
    return lines + ["", note]
