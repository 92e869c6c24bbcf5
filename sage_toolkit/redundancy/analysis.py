"""Redundancy analysis of trained checkpoints (``sage-analyze-redundancy``): prune by sensitivity or magnitude,
measure the loss. SAGE claims to leave fewer redundant parameters, so a model trained with it should lose more when
its least important weights go; docs/toolkit.md and RESULTS.md say what was found. For every checkpoint,
:func:`analyze_model` runs these steps:

1. load it in-process (:mod:`.model`), with the criterion of its own configuration;
2. :func:`pruning_scope`: every weight matrix that the forward pass reads, with its sensitivity, the mean of
   ``|theta * grad|`` over ``batches`` batches of ``sensitivity_subset`` (:mod:`.sensitivity`). fairseq 0.12's
   encoder layers also hold BetterTransformer copies of their weights that get no gradient: they are left out and
   listed as ``excluded_unused_tensors``;
3. :class:`Sweeps`: at each sparsity and method, zero the lowest-ranked entries (one-shot: the unpruned model's
   ranking), measure the loss and, unless ``bleu`` is off, sacreBLEU (:mod:`.scoring`), restore the weights;
4. with ``by_layer_type``, step 3 within each layer type alone (a small model's embeddings dominate a global ranking).

Each measured point is one pass over ``subset`` and, with BLEU, one decoding of it; a heavily pruned model may decode
to the length limit, so on a CPU prefer no BLEU. The checkpoint files are only read. :func:`run` writes
``redundancy.json`` and the figures of :mod:`.plots` into ``out``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sage_toolkit.atomic import write_atomic
from sage_toolkit.errors import ToolkitError
from sage_toolkit.redundancy.model import check_data_bin as require_splits
from sage_toolkit.redundancy.model import load
from sage_toolkit.redundancy.options import METHODS, RedundancyOptions
from sage_toolkit.redundancy.plots import plot_curves, plot_curves_by_layer_type, plot_sensitivities
from sage_toolkit.redundancy.pruning import (
    LAYER_TYPES,
    SCOPE,
    layer_type,
    num_pruned,
    overlap_fraction,
    prune_,
    pruned_parameters,
    ranking,
    zero_fraction,
)
from sage_toolkit.redundancy.scoring import BleuScorer, validation_loss
from sage_toolkit.redundancy.sensitivity import quantiles_by_type, sensitivities
from sage_toolkit.redundancy.summary import group_summary, layer_type_summaries

PROG = "sage-analyze-redundancy"  # the console script; also the prefix of its messages
OUTPUTS = ("redundancy.json", "pruning_curves.png", "sensitivity_by_layer_type.png")
BY_TYPE_OUTPUT = "pruning_curves_by_layer_type.png"


def parse_checkpoints(values: tuple[str, ...]) -> dict[str, Path]:
    """NAME=PATH -> {name: checkpoint file}; a save dir stands for its checkpoint_best.pt, else checkpoint_last.pt."""
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ToolkitError(f"--checkpoints takes NAME=PATH, got {v!r}")
        if name in out:
            raise ToolkitError(f"--checkpoints: the name {name!r} is given twice")
        p = Path(path)
        if p.is_dir():
            for fname in ("checkpoint_best.pt", "checkpoint_last.pt"):
                if (p / fname).is_file():
                    p = p / fname
                    break
            else:
                raise ToolkitError(f"checkpoint {name}: {p} has neither checkpoint_best.pt nor checkpoint_last.pt")
        if not p.is_file():
            raise ToolkitError(f"checkpoint {name}: {p} does not exist")
        out[name] = p
    return out


def check_data_bin(options: RedundancyOptions) -> None:
    splits = {options.subset: "--subset"}
    splits.setdefault(options.sensitivity_subset, "--sensitivity-subset")
    require_splits(options.data_bin, splits)


@dataclass
class Scope:
    """The weight matrices that are ranked and pruned (those the forward pass reads), with their sensitivities, and
    the names of those left out because the forward pass never reads them."""

    names: list[str]
    params: list
    sens: list
    unused: list[str]

    @property
    def types(self) -> list[str]:
        return [layer_type(n) for n in self.names]

    @property
    def entries(self) -> int:
        return sum(p.numel() for p in self.params)


def pruning_scope(model, criterion, task, options: RedundancyOptions, use_cuda: bool) -> Scope:
    """Steps 2 and 3 of the module docstring: the sensitivities, and the scope they leave."""
    o = options
    candidates = pruned_parameters(model)
    sens, used = sensitivities(
        model, criterion, task, [p for _, p in candidates], subset=o.sensitivity_subset, batches_wanted=o.batches,
        max_tokens=o.max_tokens, seed=o.seed, use_cuda=use_cuda,
    )  # fmt: skip
    scope = [c for c, u in zip(candidates, used, strict=True) if u]
    return Scope(
        names=[n for n, _ in scope],
        params=[p for _, p in scope],
        sens=[s for s, u in zip(sens, used, strict=True) if u],
        unused=[n for (n, _), u in zip(candidates, used, strict=True) if not u],
    )


class Sweeps:
    """Step 4: prune part of the scope in a ranking's order to every sparsity, measure, restore the weights."""

    def __init__(self, name: str, scope: Scope, measure, sparsities: tuple[float, ...]):
        self.name, self.scope, self.measure, self.sparsities = name, scope, measure, sparsities
        self.originals = [p.detach().clone() for p in scope.params]
        self.unpruned = measure()
        types = scope.types
        self.members = {
            kind: [p for p, t in zip(scope.params, types, strict=True) if t == kind] for kind in dict.fromkeys(types)
        }

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for p, original in zip(self.scope.params, self.originals, strict=True):
                p.copy_(original)

    def sweep(self, label: str, pruned: list, order) -> list[dict]:
        """Prune ``pruned`` (a subset of the scope) to every sparsity of its own entries in ``order``, measure. A
        global sweep also records how much of each layer type its one ranking zeroed: a type whose weights are
        smaller or less sensitive than the others' loses more than the sparsity says."""
        rows, count = [], sum(p.numel() for p in pruned)
        for s in self.sparsities:
            k = num_pruned(s, count)
            prune_(pruned, order, k)
            row = {"sparsity": s, "n_pruned": k, "zero_fraction": zero_fraction(pruned)}
            if pruned is self.scope.params:
                row["zero_fraction_by_layer_type"] = {kind: zero_fraction(ps) for kind, ps in self.members.items()}
            row.update(self.measure())
            row["loss_increase"] = row["loss"] - self.unpruned["loss"]
            if "bleu" in row:
                row["bleu_drop"] = self.unpruned["bleu"] - row["bleu"]
            rows.append(row)
            self.restore()
            print(f"{PROG}: {self.name} {label} {s:.2f}: loss {row['loss']:.4f}"
                  + (f" BLEU {row['bleu']:.2f}" if "bleu" in row else ""), flush=True)  # fmt: skip
        return rows

    def by_layer_type(self, methods: tuple[str, ...]) -> dict[str, dict[str, list]]:
        """Step 5: each layer type's entries ranked among themselves and pruned alone."""
        types, by_type = self.scope.types, {}
        for kind in (t for t in LAYER_TYPES if t in types):
            chosen = [i for i, t in enumerate(types) if t == kind]
            pruned = [self.scope.params[i] for i in chosen]
            scores = {"sensitivity": [self.scope.sens[i] for i in chosen], "magnitude": magnitudes(pruned)}
            by_type[kind] = {
                method: self.sweep(f"{kind} {method}", pruned, ranking(scores[method])) for method in methods
            }
        return by_type


def magnitudes(params: list) -> list:
    return [p.detach().abs() for p in params]


def measurer(model, criterion, task, options: RedundancyOptions, use_cuda: bool, bleu_scorer_cache: dict):
    """A function that measures the model as it is now: loss and NLL on the subset, and BLEU unless it is off (the
    data-bin's settings and references read once, into ``bleu_scorer_cache``)."""
    o, scorer = options, None
    if o.bleu:
        if "scorer" not in bleu_scorer_cache:
            bleu_scorer_cache["scorer"] = BleuScorer(task, o)
        scorer = bleu_scorer_cache["scorer"]

    def measure() -> dict:
        m = validation_loss(model, criterion, task, subset=o.subset, max_tokens=o.max_tokens, seed=o.seed,
                            use_cuda=use_cuda)  # fmt: skip
        if scorer is not None:
            m.update(scorer(model, task, use_cuda))
        return m

    return measure


def overlaps(orders: dict, sparsities: tuple[float, ...], total: int) -> dict[str, float]:
    """The overlap of the two methods' pruned sets at each sparsity (when both were run)."""
    overlap = {}
    if set(METHODS) <= set(orders):
        for s in sparsities:
            k = num_pruned(s, total)
            if k:
                overlap[f"{s:g}"] = overlap_fraction(orders["sensitivity"], orders["magnitude"], k)
    return overlap


def analyze_model(
    name: str, checkpoint: Path, options: RedundancyOptions, use_cuda: bool, bleu_scorer_cache: dict
) -> tuple[dict, dict]:
    """(the JSON record of one model, its log10 sensitivities per layer type for the plot)."""
    o = options
    start = time.time()
    model, task, cfg, criterion = load(checkpoint, o.data_bin, use_cuda)
    for split in dict.fromkeys((o.subset, o.sensitivity_subset)):  # the BLEU scorer reads the subset's size
        if split not in task.datasets:
            task.load_dataset(split, combine=False, epoch=1)
    scope = pruning_scope(model, criterion, task, o, use_cuda)
    note = f"; not used in the forward pass, left out: {', '.join(scope.unused)}" if scope.unused else ""
    print(f"{PROG}: {name}: {checkpoint}: {len(scope.params)} tensors, {scope.entries} entries in scope{note}",
          flush=True)  # fmt: skip
    orders = {m: ranking(scope.sens if m == "sensitivity" else magnitudes(scope.params)) for m in o.methods}
    sweeps = Sweeps(name, scope, measurer(model, criterion, task, o, use_cuda, bleu_scorer_cache), o.sparsities)
    results = {method: sweeps.sweep(method, scope.params, orders[method]) for method in o.methods}
    by_type = sweeps.by_layer_type(o.methods) if o.by_layer_type else {}
    summary, values = quantiles_by_type(scope.names, scope.sens)
    record = {
        "checkpoint": str(checkpoint.resolve()),
        "criterion": cfg.criterion._name if hasattr(cfg.criterion, "_name") else str(cfg.criterion),
        "entries_in_scope": scope.entries,
        "entries_by_layer_type": {k: v["entries"] for k, v in summary.items()},
        "tensors": [
            {"name": n, "shape": list(p.shape), "layer_type": layer_type(n)}
            for n, p in zip(scope.names, scope.params, strict=True)
        ],  # fmt: skip
        "excluded_unused_tensors": scope.unused,
        "unpruned": sweeps.unpruned,
        "results": results,
        **({"results_by_layer_type": by_type} if o.by_layer_type else {}),
        "pruned_set_overlap_sensitivity_vs_magnitude": overlaps(orders, o.sparsities, scope.entries),
        "log10_sensitivity_by_layer_type": summary,
        "sensitivity_batches": o.batches,
        "elapsed_s": round(time.time() - start, 1),
    }
    return record, values


def run(options: RedundancyOptions) -> dict:
    """Analyse every checkpoint of ``options``; write ``redundancy.json`` and the figures into ``options.out``;
    returns what the JSON holds."""
    import torch

    check_data_bin(options)
    checkpoints = parse_checkpoints(options.checkpoints)
    use_cuda = torch.cuda.is_available() and not options.cpu
    models, values, cache = {}, {}, {}
    for name, path in checkpoints.items():
        models[name], values[name] = analyze_model(name, path, options, use_cuda, cache)
    bleu = f"sacreBLEU of detokenised beam-{options.beam} output over the whole subset (scripts/evaluate.py settings)"
    sensitivity = f"mean over {options.batches} batches of |theta * grad| of the per-token training loss, eval mode"
    result = {
        "data_bin": str(options.data_bin.resolve()),
        "subset": options.subset,
        "sensitivity_subset": options.sensitivity_subset,
        "scope": SCOPE,
        "sensitivity": sensitivity,
        "pruning": "one-shot: entries zeroed in ranking order of the unpruned model, weights restored after each level",
        "loss": "criterion loss per target token, base 2 (fairseq's valid_loss), over the whole subset",
        "bleu": bleu if options.bleu else None,
        "sparsities": list(options.sparsities),
        "methods": list(options.methods),
        "max_tokens": options.max_tokens,
        "device": "cuda" if use_cuda else "cpu",
        "models": models,
        **summaries(models),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_outputs(options.out, result, values)
    return result


def summaries(models: dict) -> dict:
    """``groups`` (:func:`group_summary`) and, where the models were pruned within layer types,
    ``groups_by_layer_type``: the same per layer type."""
    by_type = layer_type_summaries(models)
    return {"groups": group_summary(models), **({"groups_by_layer_type": by_type} if by_type else {})}


def write_outputs(out: Path, result: dict, values: dict | None) -> None:
    """redundancy.json and the figures of ``result`` into ``out`` (the sensitivity histograms only with ``values``,
    the raw log10 sensitivities per model)."""
    json_name, curves_name, sensitivity_name = OUTPUTS
    models, bleu = result["models"], result.get("bleu") is not None
    out.mkdir(parents=True, exist_ok=True)  # only now: an analysis that fails leaves no folder behind
    write_atomic(out / json_name, json.dumps(result, indent=2) + "\n")
    plot_curves(models, out / curves_name, bleu)
    if values is not None:
        plot_sensitivities(values, out / sensitivity_name)
    if "groups_by_layer_type" in result:
        plot_curves_by_layer_type(models, out / BY_TYPE_OUTPUT, bleu)
