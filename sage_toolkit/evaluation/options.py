"""The options of one evaluation (``scripts/evaluate.py``'s command line as a typed object)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from sage_toolkit.evaluation.dataset import ScoringOverrides


@dataclass(frozen=True)
class EvalOptions:
    """What to translate and how (the defaults are the command line's)."""

    data_bin: Path  # a fairseq data-bin (a data_prep folder or any)
    checkpoint: Path  # a checkpoint file or a save dir
    average_last: int | None = None  # average the last N numbered checkpoints of the save dir
    average_by: str = "auto"  # which numbered checkpoints: auto (epoch ones if any, else update ones), epoch, update
    subset: str = "test"
    beam: int = 5
    lenpen: float = 1.0
    max_tokens: int = 8000
    batch_size: int | None = None
    cpu: bool = False
    out: Path | None = None  # JSON output (None: <checkpoint dir>/eval.<subset>.json)
    overwrite: bool = False  # replace an existing result even if it was made with other settings
    overrides: ScoringOverrides = field(default_factory=ScoringOverrides)

    def absolute(self) -> EvalOptions:
        """The same options with absolute paths: fairseq-generate runs from the repository root, so the user's
        relative paths are made absolute first."""

        def absolute(path: Path | None) -> Path | None:
            return None if path is None else Path(path).absolute()

        overrides = dataclasses.replace(
            self.overrides, ref=absolute(self.overrides.ref), tok_ref=absolute(self.overrides.tok_ref)
        )
        return dataclasses.replace(
            self,
            data_bin=absolute(self.data_bin),
            checkpoint=absolute(self.checkpoint),
            out=absolute(self.out),
            overrides=overrides,
        )
