"""fairseq's training log (``common.log_file`` with ``common.log_format=json``) read into records."""

from __future__ import annotations

import json
from pathlib import Path


def number(value):
    """fairseq logs numbers as strings ("4.275"): a float where it parses, else the value unchanged."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def parse_record(line: str) -> dict | None:
    """The JSON object in one line of fairseq's log or progress output (after its "[time][kind][INFO] - " prefix),
    values as fairseq wrote them; None for a line without one."""
    start = line.find('{"')
    if start < 0:
        return None
    try:
        return json.loads(line[start:])
    except json.JSONDecodeError:
        return None


def json_records(path: Path):
    """Every JSON object in the log, once: fairseq 0.12's progress_bar() adds one more FileHandler for
    common.log_file at every call (each epoch), so from epoch k on every record is written k times."""
    if not Path(path).exists():
        return
    seen = set()
    for line in Path(path).read_text(errors="replace").splitlines():
        start = line.find('{"')
        if start < 0 or line[start:] in seen:
            continue
        seen.add(line[start:])
        record = parse_record(line[start:])
        if record is not None:
            yield record


def read_log(path: Path) -> dict[str, list[dict]]:
    """The log -> records by kind: ``train_inner`` (per-interval training statistics), ``train`` (end-of-epoch
    summaries), ``valid``. The file has no progress-bar tags, so the kind is told by the keys (valid_*, train_*)."""
    records: dict[str, list[dict]] = {"train_inner": [], "train": [], "valid": []}
    for raw in json_records(path):
        kind = "valid" if "valid_loss" in raw else "train" if "train_loss" in raw else "train_inner"
        if kind != "train_inner" or "num_updates" in raw:
            records[kind].append({k: number(v) for k, v in raw.items()})
    return records


def sage_statistics(log: dict[str, list[dict]]) -> dict[str, list] | None:
    """The SAGE multiplier's statistics over training, from the ``train_inner`` records of :func:`read_log` that carry
    them (``sage_r_mean`` ...: the scheduler logs them on its sampled updates, ``--sage-stats-by-kind`` adds
    ``sage_KIND_*``): columns ``{"update": [...], "alpha": [...], "r_mean": [...], ...}`` (the ``sage_`` prefix
    dropped, None where a record lacks a key); None when no record has them (Adam, or statistics off)."""
    rows = [r for r in log["train_inner"] if "sage_r_mean" in r]
    if not rows:
        return None
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("sage_")))
    columns = {"update": [int(r["num_updates"]) for r in rows]}
    columns.update({k.removeprefix("sage_"): [r.get(k) for r in rows] for k in keys})
    return columns
