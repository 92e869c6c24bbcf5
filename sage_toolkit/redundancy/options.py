"""The options of a redundancy analysis (``scripts/analyze_redundancy.py``'s command line as a typed object)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METHODS = ("sensitivity", "magnitude")
DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@dataclass(frozen=True)
class RedundancyOptions:
    """What to analyse and how (the defaults are the command line's)."""

    data_bin: Path  # the fairseq data-bin the checkpoints were trained on
    checkpoints: tuple[str, ...]  # NAME=PATH (a file, or a save dir: checkpoint_best.pt, else checkpoint_last.pt)
    out: Path  # output folder
    subset: str = "valid"  # split for loss and BLEU
    sensitivity_subset: str = "train"  # split whose batches estimate the sensitivity
    batches: int = 8  # batches for the sensitivity estimate
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES  # fractions of the entries in scope to zero, each in [0, 1)
    methods: tuple[str, ...] = METHODS  # rankings
    bleu: bool = True  # measure BLEU
    beam: int = 1  # beam size for BLEU (1: greedy)
    max_len_a: float = 0.0  # generation max length a*src_len+b
    max_len_b: int = 200
    max_tokens: int = 4096  # tokens per batch
    seed: int = 1  # seed of the sensitivity batches' order
    cpu: bool = False  # run on the CPU even if CUDA is available
    by_layer_type: bool = False  # also prune within each layer type alone
