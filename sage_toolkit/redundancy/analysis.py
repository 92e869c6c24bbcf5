"""Redundancy analysis of trained fairseq translation checkpoints: prune by sensitivity or magnitude, measure the loss.

SAGE (Liang et al., ICLR 2022) claims to leave fewer redundant parameters: a model trained with it should lose more
when its least important weights are removed. :func:`run` makes that visible. For every checkpoint:

1. Load it in-process (:mod:`.model`) and build its criterion from the checkpoint's own configuration.
2. Sensitivity (:mod:`.sensitivity`): the mean over ``batches`` batches of the ``sensitivity_subset`` split of
   ``|theta * grad|``, entry by entry.
3. Pruning scope and ranking (:mod:`.pruning`): every weight matrix, ranked globally; fairseq 0.12's encoder layers
   hold BetterTransformer copies of their weights (``in_proj_weight``, ``out_proj_weight``, ``fc1_weight``,
   ``fc2_weight``) that the ordinary forward never reads: they receive no gradient and are listed as
   ``excluded_unused_tensors`` in the JSON.
4. For each sparsity s in ``sparsities`` (each in [0, 1)) and each method: zero the lowest-ranked entries (one-shot:
   the ranking comes from the unpruned model, no retraining or re-ranking), measure (:mod:`.scoring`: loss, NLL and,
   unless ``bleu`` is off, sacreBLEU over the whole ``subset``), then restore the weights. The checkpoint file is only
   read.

5. With ``by_layer_type``, step 4 again within each layer type (embeddings, attention, feed-forward) alone: the
   type's entries ranked among themselves and only they pruned, to each sparsity of the type's own entries. A small
   model's embeddings hold most of its weights and dominate the global ranking; this shows each type's redundancy.

Cost: the sensitivity is ``batches`` forward/backward passes; every (method, sparsity) point, and the unpruned model,
is one pass over the subset for the loss and, with BLEU, one decoding of it. A heavily pruned model may translate
every sentence to the length limit (``max_len_a``/``max_len_b``, fairseq-generate's defaults 0 and 200): on a CPU
prefer no BLEU or a lower limit; on a GPU a Multi30k/IWSLT'14 validation set is quick.

Outputs in ``out``: ``redundancy.json`` (settings, the scope, per model: the unpruned metrics, per method and
sparsity: loss, nll_loss, BLEU, the measured fraction of zeros in the scope, the overlap of the two methods' pruned
sets; quantiles of log10 sensitivity per layer type; ``groups``: :mod:`.summary`; with ``by_layer_type``:
``results_by_layer_type`` per model and ``groups_by_layer_type``) and the figures of :mod:`.plots`
(``pruning_curves_by_layer_type.png`` with ``by_layer_type``).
"""

from __future__ import annotations

import json
import time
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


def analyze_model(
    name: str, checkpoint: Path, options: RedundancyOptions, use_cuda: bool, bleu_scorer_cache: dict
) -> tuple[dict, dict]:
    """(the JSON record of one model, its log10 sensitivities per layer type for the plot)."""
    import torch

    o = options
    start = time.time()
    model, task, cfg, criterion = load(checkpoint, o.data_bin, use_cuda)
    for split in dict.fromkeys((o.subset, o.sensitivity_subset)):  # the BLEU scorer reads the subset's size
        if split not in task.datasets:
            task.load_dataset(split, combine=False, epoch=1)
    candidates = pruned_parameters(model)
    sens, used = sensitivities(
        model, criterion, task, [p for _, p in candidates], subset=o.sensitivity_subset, batches_wanted=o.batches,
        max_tokens=o.max_tokens, seed=o.seed, use_cuda=use_cuda,
    )  # fmt: skip
    unused = [n for (n, _), u in zip(candidates, used, strict=True) if not u]
    scope = [c for c, u in zip(candidates, used, strict=True) if u]
    sens = [s for s, u in zip(sens, used, strict=True) if u]
    names = [n for n, _ in scope]
    params = [p for _, p in scope]
    total = sum(p.numel() for p in params)
    note = f"; not used in the forward pass, left out: {', '.join(unused)}" if unused else ""
    print(f"{PROG}: {name}: {checkpoint}: {len(params)} tensors, {total} entries in scope{note}", flush=True)
    orders = {}
    for method in o.methods:
        orders[method] = ranking(sens if method == "sensitivity" else [p.detach().abs() for p in params])
    originals = [p.detach().clone() for p in params]

    scorer = None
    if o.bleu:
        if "scorer" not in bleu_scorer_cache:  # the data-bin's settings and references, read once
            bleu_scorer_cache["scorer"] = BleuScorer(task, o)
        scorer = bleu_scorer_cache["scorer"]

    def measure() -> dict:
        m = validation_loss(model, criterion, task, subset=o.subset, max_tokens=o.max_tokens, seed=o.seed,
                            use_cuda=use_cuda)  # fmt: skip
        if scorer is not None:
            m.update(scorer(model, task, use_cuda))
        return m

    def restore() -> None:
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                p.copy_(original)

    unpruned = measure()

    types = [layer_type(n) for n in names]
    members = {kind: [p for p, t in zip(params, types, strict=True) if t == kind] for kind in dict.fromkeys(types)}

    def sweep(label: str, pruned: list, order) -> list[dict]:
        """Prune ``pruned`` (a subset of ``params``) to every sparsity of its own entries in ``order``, measure. A
        global sweep also records how much of each layer type its one ranking zeroed: a type whose weights are
        smaller or less sensitive than the others' loses more than the sparsity says."""
        rows, count = [], sum(p.numel() for p in pruned)
        for s in o.sparsities:
            k = num_pruned(s, count)
            prune_(pruned, order, k)
            row = {"sparsity": s, "n_pruned": k, "zero_fraction": zero_fraction(pruned)}
            if pruned is params:
                row["zero_fraction_by_layer_type"] = {kind: zero_fraction(ps) for kind, ps in members.items()}
            row.update(measure())
            row["loss_increase"] = row["loss"] - unpruned["loss"]
            if "bleu" in row:
                row["bleu_drop"] = unpruned["bleu"] - row["bleu"]
            rows.append(row)
            restore()
            print(f"{PROG}: {name} {label} {s:.2f}: loss {row['loss']:.4f}"
                  + (f" BLEU {row['bleu']:.2f}" if "bleu" in row else ""), flush=True)  # fmt: skip
        return rows

    results = {method: sweep(method, params, orders[method]) for method in o.methods}
    by_type: dict[str, dict[str, list]] = {}
    if o.by_layer_type:
        for kind in (t for t in LAYER_TYPES if t in types):
            chosen = [i for i, t in enumerate(types) if t == kind]
            pruned = [params[i] for i in chosen]
            scores = {"sensitivity": [sens[i] for i in chosen], "magnitude": [p.detach().abs() for p in pruned]}
            by_type[kind] = {method: sweep(f"{kind} {method}", pruned, ranking(scores[method])) for method in o.methods}
    overlap = {}
    if set(METHODS) <= set(orders):
        for s in o.sparsities:
            k = num_pruned(s, total)
            if k:
                overlap[f"{s:g}"] = overlap_fraction(orders["sensitivity"], orders["magnitude"], k)
    summary, values = quantiles_by_type(names, sens)
    tensors = [{"name": n, "shape": list(p.shape), "layer_type": layer_type(n)} for n, p in scope]
    record = {
        "checkpoint": str(checkpoint.resolve()),
        "criterion": cfg.criterion._name if hasattr(cfg.criterion, "_name") else str(cfg.criterion),
        "entries_in_scope": total,
        "entries_by_layer_type": {k: v["entries"] for k, v in summary.items()},
        "tensors": tensors,
        "excluded_unused_tensors": unused,
        "unpruned": unpruned,
        "results": results,
        **({"results_by_layer_type": by_type} if o.by_layer_type else {}),
        "pruned_set_overlap_sensitivity_vs_magnitude": overlap,
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
