"""Where a model's loss sits (``sage-analyze-token-loss``): the per-token NLL of trained checkpoints, split by each
token's count in training. SAGE gives rare events larger steps (a rare token's embedding row has a gradient on few
batches), so it may fit rare tokens better in training and worse on unseen text; docs/toolkit.md and RESULTS.md say
what was found. For every checkpoint and every ``subsets`` split, :func:`run`:

1. scores every target token of the split's first ``max_sentences`` sentences, eval mode, teacher forcing:
   NLL = -log2 p(token), no label smoothing (the mean over a split is fairseq's ``nll_loss``, up to summation order);
2. puts each target token into the band of its count in the binarised ``train`` split (``edges`` e1 < e2 < ...:
   count < e1, e1 <= count < e2, ..., count >= e_last), and again into the band of its sentence's rarest source token;
3. with ``multiplier_batches``, measures SAGE's multiplier on the embedding rows (:mod:`.multipliers`).

:func:`table` gives each band's share of the models' difference (the shares add up to the difference of the means).
The checkpoint files are only read; the output is ``token_loss.json`` in ``out``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.redundancy.analysis import parse_checkpoints
from sage_toolkit.redundancy.model import check_data_bin as require_splits
from sage_toolkit.redundancy.model import load, to_device
from sage_toolkit.stats import finite, format_difference, format_mean_std

PROG = "sage-analyze-token-loss"  # the console script; also the prefix of its messages
OUTPUT = "token_loss.json"
DEFAULT_EDGES = (10, 100, 1000)
DEFAULT_SUBSETS = ("valid",)
BAND_KINDS = ("target_bands", "source_bands")


@dataclass(frozen=True)
class TokenLossOptions:
    """What to measure and how (the defaults are the command line's)."""

    data_bin: Path  # the fairseq data-bin the checkpoints were trained on (its train split gives the counts)
    checkpoints: tuple[str, ...]  # NAME=PATH (a file, or a save dir: checkpoint_best.pt, else checkpoint_last.pt)
    out: Path  # output folder
    subsets: tuple[str, ...] = DEFAULT_SUBSETS  # splits to score
    edges: tuple[int, ...] = DEFAULT_EDGES  # band edges on the train count, increasing, each >= 1
    max_sentences: int | None = None  # score only each split's first N sentences (None: all)
    max_tokens: int = 4096  # tokens per batch (source or target, whichever is longer)
    cpu: bool = False  # run on the CPU even if CUDA is available
    multiplier_batches: int = 0  # SAGE checkpoints: the embedding rows' multiplier on this many train batches (0: off)
    seed: int = 1  # seed of those batches' order and dropout


def band_labels(edges: tuple[int, ...]) -> list[str]:
    """'< e1', 'e1-(e2-1)', ..., '>= e_last': the bands of :func:`bands` in order."""
    labels = [f"< {edges[0]}"]
    labels += [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]
    return labels + [f">= {edges[-1]}"]


def check_edges(edges: tuple[int, ...]) -> None:
    if not edges:
        raise ToolkitError("--edges: give at least one band edge")
    if any(e < 1 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ToolkitError(f"--edges must be increasing positive counts, got {' '.join(map(str, edges))}")


def bands(counts, edges: tuple[int, ...]):
    """The band index of every count: 0 for count < edges[0], i for edges[i-1] <= count < edges[i], len(edges) for
    count >= edges[-1]."""
    import torch

    return torch.bucketize(counts, torch.tensor(edges, dtype=counts.dtype), right=True)


def split_counts(dataset, dictionary_size: int, side: str):
    """How often each token id occurs on one side (``"src"``/``"tgt"``) of a fairseq LanguagePairDataset."""
    import torch

    data = getattr(dataset, side)
    if data is None:
        raise ToolkitError(f"the train split has no {side} side")
    total = torch.zeros(dictionary_size, dtype=torch.long)
    chunk = []
    for i in range(len(data)):
        chunk.append(data[i].long())
        if len(chunk) == 4096 or i == len(data) - 1:
            total += torch.bincount(torch.cat(chunk), minlength=dictionary_size)
            chunk = []
    return total


def check_data_bin(options: TokenLossOptions) -> None:
    splits = {"train": "the token counts are taken from it"}
    splits.update({split: "--subsets" for split in options.subsets if split != "train"})
    require_splits(options.data_bin, splits)


def sentence_batches(dataset, n: int, max_tokens: int):
    """Collated batches of the dataset's first ``n`` sentences, grouped by length with fairseq's own batching (at most
    ``max_tokens`` tokens of source or target, padding included). The order is a stable sort by length, not the
    dataset's ``ordered_indices``, which breaks ties at random: the same model must give the same sums."""
    import numpy as np

    indices = np.arange(n, dtype=np.int64)
    order = indices[np.argsort(dataset.num_tokens_vec(indices), kind="stable")]
    for batch in dataset.batch_by_size(order, max_tokens=max_tokens):
        yield dataset.collater([dataset[i] for i in batch])


def score_split(model, task, subset: str, counts: dict, options: TokenLossOptions, use_cuda: bool) -> dict:
    """One model on one split: {"sentences", "all": {tokens, nll}, "target_bands": [...], "source_bands": [...]}."""
    import torch

    dataset = task.dataset(subset)
    n = len(dataset) if options.max_sentences is None else min(options.max_sentences, len(dataset))
    n_bands = len(options.edges) + 1
    sums = {kind: torch.zeros(n_bands, dtype=torch.float64) for kind in BAND_KINDS}
    tokens = {kind: torch.zeros(n_bands, dtype=torch.long) for kind in BAND_KINDS}
    src_pad, tgt_pad = task.source_dictionary.pad(), task.target_dictionary.pad()
    with torch.no_grad():
        for sample in sentence_batches(dataset, n, options.max_tokens):
            sample = to_device(sample, use_cuda)
            net_output = model(**sample["net_input"])
            lprobs = model.get_normalized_probs(net_output, log_probs=True).double()
            target = sample["target"]
            nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu() / math.log(2)
            target = target.cpu()
            mask = target != tgt_pad
            src = sample["net_input"]["src_tokens"].cpu()
            src_counts = counts["src"][src].masked_fill(src == src_pad, torch.iinfo(torch.long).max)
            rarest = bands(src_counts.min(dim=1).values, options.edges)
            band_of = {"target_bands": bands(counts["tgt"][target], options.edges),
                       "source_bands": rarest.unsqueeze(1).expand_as(target)}  # fmt: skip
            for kind in BAND_KINDS:
                b = band_of[kind][mask]
                sums[kind] += torch.bincount(b, weights=nll[mask], minlength=n_bands)
                tokens[kind] += torch.bincount(b, minlength=n_bands)
    labels = band_labels(options.edges)

    def rows(kind: str) -> list[dict]:
        return [{"band": labels[i], "tokens": int(tokens[kind][i]),
                 "nll": float(sums[kind][i] / tokens[kind][i]) if tokens[kind][i] else None}
                for i in range(n_bands)]  # fmt: skip

    total_tokens = int(tokens["target_bands"].sum())
    if not total_tokens:
        raise ToolkitError(f"split {subset!r} has no target tokens to score")
    whole = {"tokens": total_tokens, "nll": float(sums["target_bands"].sum() / total_tokens)}
    return {"sentences": n, "all": whole, **{kind: rows(kind) for kind in BAND_KINDS}}


def run(options: TokenLossOptions) -> dict:
    """Measure every checkpoint of ``options`` on every split; write ``token_loss.json``; returns what it holds."""
    import torch

    check_edges(options.edges)
    if options.max_sentences is not None and options.max_sentences < 1:
        raise ToolkitError(f"--max-sentences must be positive, got {options.max_sentences}")
    if options.multiplier_batches < 0:
        raise ToolkitError(f"--multiplier-batches must be 0 or more, got {options.multiplier_batches}")
    check_data_bin(options)
    checkpoints = parse_checkpoints(options.checkpoints)
    use_cuda = torch.cuda.is_available() and not options.cpu
    counts = None
    models = {}
    for name, path in checkpoints.items():
        start = time.time()
        model, task, _, criterion = load(path, options.data_bin, use_cuda)
        for split in options.subsets:
            task.load_dataset(split, combine=False, epoch=1)
        if counts is None:  # one data-bin for all: its train split counted once
            if "train" not in task.datasets:
                task.load_dataset("train", combine=False, epoch=1)
            train = task.dataset("train")
            counts = {"src": split_counts(train, len(task.source_dictionary), "src"),
                      "tgt": split_counts(train, len(task.target_dictionary), "tgt")}  # fmt: skip
        record = {"checkpoint": str(path)}
        for subset in options.subsets:
            record[subset] = score_split(model, task, subset, counts, options, use_cuda)
        if options.multiplier_batches:
            record["multipliers"] = multipliers(path, model, criterion, task, counts, options, use_cuda)
        record["elapsed_s"] = round(time.time() - start, 1)
        models[name] = record
        print(f"{PROG}: {name}: {path}: " + ", ".join(
            f"{s} NLL {record[s]['all']['nll']:.4f} over {record[s]['all']['tokens']} tokens" for s in options.subsets
        ), flush=True)  # fmt: skip
    result = {
        "data_bin": str(options.data_bin.resolve()),
        "subsets": list(options.subsets),
        "max_sentences": options.max_sentences,
        "edges": list(options.edges),
        "nll": "-log2 p(target token), teacher forcing, eval mode (no dropout), no label smoothing",
        "target_bands": "by the target token's count in the train split's target side (EOS included)",
        "source_bands": "every target token by the count of its sentence's rarest source token in the train split",
        "train_counts": {side: int(c.sum()) for side, c in counts.items()},
        "device": "cuda" if use_cuda else "cpu",
        "models": models,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    options.out.mkdir(parents=True, exist_ok=True)  # only now: a measurement that fails leaves no folder behind
    write_atomic(options.out / OUTPUT, json.dumps(result, indent=2) + "\n")
    return result


def multipliers(path: Path, model, criterion, task, counts: dict, options: TokenLossOptions, use_cuda: bool) -> dict:
    """:func:`~.multipliers.row_multipliers` of one loaded checkpoint (``criterion``: built from its configuration;
    the file is read again for the optimizer state, which the loaded model does not keep)."""
    from fairseq import checkpoint_utils

    from sage_toolkit.token_loss.multipliers import row_multipliers

    checkpoint = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    try:
        return row_multipliers(checkpoint, model, criterion, task, counts, options.edges,
                               batches=options.multiplier_batches, seed=options.seed, max_tokens=options.max_tokens,
                               use_cuda=use_cuda)  # fmt: skip
    finally:
        model.eval()


def shares(base: list[dict], other: list[dict]) -> list[float | None]:
    """Each band's share of the difference of the means (other - base): the band's NLL difference times its
    fraction of the tokens (the bands of ``base``). The shares add up to the difference of the means."""
    total = sum(row["tokens"] for row in base)
    out = []
    for b, o in zip(base, other, strict=True):
        if b["tokens"] != o["tokens"]:
            raise ToolkitError(f"band {b['band']}: {b['tokens']} vs {o['tokens']} tokens: not the same split")
        out.append(None if not b["tokens"] else (o["nll"] - b["nll"]) * b["tokens"] / total)
    return out


def table(result: dict) -> str:
    """Per split and band kind: tokens, each model's mean NLL, and for every model after the first its difference
    from the first and the band's share of the difference of the means."""
    names = list(result["models"])
    first = names[0]
    lines = []
    for subset in result["subsets"]:
        for kind in BAND_KINDS:
            base = result["models"][first][subset][kind]
            header = ["band", "tokens", *names]
            header += [f"{n} - {first} (share)" for n in names[1:]]
            lines += [f"{subset}, {kind.replace('_', ' ')} (mean NLL per token, bits)",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
            per_model_shares = {n: shares(base, result["models"][n][subset][kind]) for n in names[1:]}
            for i, row in enumerate(base):
                cells = [row["band"], str(row["tokens"])]
                cells += [_fmt(result["models"][n][subset][kind][i]["nll"]) for n in names]
                for n in names[1:]:
                    other = result["models"][n][subset][kind][i]["nll"]
                    share = per_model_shares[n][i]
                    cells.append("" if share is None else f"{other - row['nll']:+.3f} ({share:+.4f})")
                lines.append("| " + " | ".join(cells) + " |")
            cells = ["all", str(result["models"][first][subset]["all"]["tokens"])]
            cells += [_fmt(result["models"][n][subset]["all"]["nll"]) for n in names]
            base_all = result["models"][first][subset]["all"]["nll"]
            cells += [f"{result['models'][n][subset]['all']['nll'] - base_all:+.4f}" for n in names[1:]]
            lines += ["| " + " | ".join(cells) + " |", ""]
    for name, record in result["models"].items():
        lines += multiplier_table(name, record["multipliers"]) if "multipliers" in record else []
    return "\n".join(lines)


def multiplier_table(name: str, measured: dict) -> list[str]:
    """The lines of one model's embedding-row multipliers (:mod:`.multipliers`)."""
    if not measured["measured"]:
        return [f"{name}: no multipliers ({measured['reason']})", ""]
    other = measured["other_sage_tensors_r_mean"]
    lines = [f"{name}: SAGE multiplier r of the embedding rows (mean over rows x {measured['batches']} train batches; "
             f"the other SAGE tensors' mean r: {_fmt(other)})",
             "| tensor | band | rows in the batch: row-batches | r | rows not in it: row-batches | r |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for tensor, rows in measured["tensors"].items():
        for inside, outside in zip(rows["in_batch"], rows["not_in_batch"], strict=True):
            lines.append(f"| {tensor} | {inside['band']} | {inside['row_batches']} | {_fmt(inside['r_mean'])} | "
                         f"{outside['row_batches']} | {_fmt(outside['r_mean'])} |")  # fmt: skip
    without = measured["embedding_tensors_without_sage"]
    return lines + ([f"(not SAGE tensors: {', '.join(without)})"] if without else []) + [""]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def group_table(result: dict) -> str:
    """Models named GROUP/ANYTHING (a study's OPTIMIZER/SETTING/seedN) summarised per group: per split and band kind,
    each group's mean ± std NLL over its models and every later group's difference from the first ± its standard
    error; then the SAGE groups' embedding-row multipliers, mean ± std over their models."""
    from sage_toolkit.redundancy.summary import group_of

    groups: dict[str, list[str]] = {}
    for name in result["models"]:
        groups.setdefault(group_of(name), []).append(name)
    names = list(groups)
    lines = []
    for subset in result["subsets"]:
        for kind in BAND_KINDS:
            header = ["band", "tokens", *(f"{g} ({len(groups[g])})" for g in names)]
            header += [f"{g} - {names[0]}" for g in names[1:]]
            lines += [f"{subset}, {kind.replace('_', ' ')}: mean ± std over each group's models (NLL per token, bits)",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
            first_model = result["models"][groups[names[0]][0]][subset]
            for i, row in enumerate([*first_model[kind], {"band": "all", "tokens": first_model["all"]["tokens"]}]):
                values = {g: [_band(result["models"][m][subset], kind, i) for m in groups[g]] for g in names}
                cells = [row["band"], str(row["tokens"]), *(format_mean_std(values[g], 3) for g in names)]
                cells += [_difference(values[names[0]], values[g]) for g in names[1:]]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    for g in names:
        measured = [result["models"][m].get("multipliers") for m in groups[g]]
        if not measured or not all(x and x["measured"] for x in measured):
            continue
        lines += [f"{g}: SAGE multiplier r of the embedding rows, mean ± std over {len(measured)} models",
                  "| tensor | band | r, rows in the batch | r, rows not in it |", "|---|---|---|---|"]  # fmt: skip
        for tensor, first in measured[0]["tensors"].items():
            for i, row in enumerate(first["in_batch"]):
                inside = [x["tensors"][tensor]["in_batch"][i]["r_mean"] for x in measured]
                outside = [x["tensors"][tensor]["not_in_batch"][i]["r_mean"] for x in measured]
                lines.append(f"| {tensor} | {row['band']} | {format_mean_std(inside, 3)} | "
                             f"{format_mean_std(outside, 3)} |")  # fmt: skip
        others = [x["other_sage_tensors_r_mean"] for x in measured]
        lines += [f"(the other SAGE tensors: r {format_mean_std(others, 3)})", ""]
    return "\n".join(lines)


def _band(record: dict, kind: str, i: int) -> float | None:
    rows = record[kind]
    return record["all"]["nll"] if i == len(rows) else rows[i]["nll"]


def _difference(base: list, other: list) -> str:
    """mean(other) - mean(base) ± its standard error, or the bare difference where a side has a single model."""
    base, other = finite(base), finite(other)
    if len(base) >= 2 and len(other) >= 2:
        return format_difference(base, other, 3)
    if base and other:
        return f"{sum(other) / len(other) - sum(base) / len(base):+.3f}"
    return ""
