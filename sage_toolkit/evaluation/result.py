"""The scores of one evaluation as one typed value, :class:`Scores`: every metric sage-evaluate computes, under the keys
of its ``eval.*.json``. results.json (a comparison's runs) and study.json record a part of them, and the tables of
results.md and study.md show a part of that: each field says where it goes (:func:`metric`), so a new metric is added
here and in the scorer that computes it (:mod:`.scoring`), and nothing else lists metric keys (docs/contributing.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# the tables that show metrics: a comparison's results.md (its summary, its per-run rows), study.md's test and per-seed
# tables, and study.md's tables of another data-bin (a fine-tuning study's base model and extra tests)
TABLES = ("comparison", "comparison_runs", "study", "other_data")
# the records that keep metrics: a comparison run's summary (results.json), a study's per-evaluation scores (study.json)
RECORDS = ("runs", "study")


def metric(label: str | None = None, digits: int = 2, tables=TABLES, records=RECORDS):
    """A field of :class:`Scores`: shown in ``tables`` (as column ``label``, ``digits`` after the point; no label: in
    no table) and kept in ``records``. A metric that is only detail of its evaluation: ``records=()``."""
    return field(default=None, metadata={"label": label, "digits": digits, "tables": tables if label else (),
                                         "records": records})  # fmt: skip


@dataclass(frozen=True)
class Scores:
    """Every metric of one evaluation (None where an older or a failed evaluation has no value)."""

    # the fields in the order results.json and study.json record them (tables: the same order)
    bleu_tok: float | None = metric("tok. BLEU", 2, tables=("comparison", "comparison_runs", "study"))
    sacrebleu: float | None = metric("sacreBLEU", 2)
    chrf: float | None = metric("chrF", 2, tables=("comparison", "study", "other_data"))
    bp: float | None = metric("BP", 3)  # sacreBLEU's brevity penalty
    sys_len: int | None = metric(records=("study",))  # sacreBLEU's hypothesis and reference lengths
    ref_len: int | None = metric(records=("study",))
    sacrebleu_signature: str | None = metric()
    # detail of the evaluation (its eval.*.json only): how each score was computed
    bleu_tok_kind: str | None = metric(records=())  # "tokenized" or "compound_split"
    bleu_tok_string: str | None = metric(records=())  # fairseq's result line
    bleu_tok_bp: float | None = metric(records=())
    bleu_tok_sys_len: int | None = metric(records=())
    bleu_tok_ref_len: int | None = metric(records=())
    bleu_tok_reference: str | None = metric(records=())  # what the tokenized BLEU scored against
    sacrebleu_string: str | None = metric(records=())
    precisions: list[float] | None = metric(records=())  # sacreBLEU's n-gram precisions
    chrf_signature: str | None = metric(records=())
    sacrebleu_lowercase: bool | None = metric(records=())
    sacrebleu_reference: str | None = metric(records=())

    def to_json(self) -> dict:
        """Every field under its key (the metrics of an ``eval.*.json``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, result: dict) -> Scores:
        """The metrics of an ``eval.*.json`` (or of a record of some of them); the keys that are no metric are left."""
        return cls(**{f.name: result.get(f.name) for f in dataclasses.fields(cls)})

    def recorded(self, record: str) -> dict:
        """The metrics a record keeps (``runs``: results.json's runs; ``study``: study.json's scores), in order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if record in f.metadata["records"]}


def recorded(result: dict, record: str) -> dict:
    """The metrics of the evaluation ``result`` (an ``eval.*.json``) that ``record`` keeps (:meth:`Scores.recorded`)."""
    return Scores.from_json(result).recorded(record)


def columns(table: str) -> list[tuple[str, str, int]]:
    """(key, label, digits) of every metric ``table`` shows (one of :data:`TABLES`), in order."""
    return [
        (f.name, f.metadata["label"], f.metadata["digits"])
        for f in dataclasses.fields(Scores)
        if table in f.metadata["tables"]
    ]
