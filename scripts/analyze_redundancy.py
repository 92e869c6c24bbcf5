#!/usr/bin/env python3
"""Redundancy analysis of trained fairseq translation checkpoints: prune by sensitivity or magnitude, measure the loss.

    python scripts/analyze_redundancy.py --data-bin DIR --checkpoints NAME=PATH [NAME=PATH ...] --out DIR
        [--subset valid] [--batches 8] [--sparsities 0 0.1 0.2 0.3 0.4 0.5 0.6] [--methods sensitivity magnitude]
        [--bleu/--no-bleu] [--beam 1] [--max-tokens 4096] [--cpu]

SAGE (Liang et al., ICLR 2022) claims to leave fewer redundant parameters: a model trained with it should lose more
when its least important weights are removed. This script makes that visible. For every checkpoint:

1. Load it in-process (``checkpoint_utils.load_model_ensemble_and_task``, the plugin in ``fairseq_plugins`` imported
   first, the data-bin given here overriding the one saved in the checkpoint) and build its criterion from the
   checkpoint's own configuration (for the recipes: label-smoothed cross-entropy).
2. Sensitivity: the mean over ``--batches`` batches of the ``--sensitivity-subset`` split (default ``train``: not the
   split the loss is measured on, where every embedding row of a token absent from the measured text would score 0 and
   be pruned for free) of ``|theta * grad|``, entry by entry,
   where grad is the gradient of the criterion's loss divided by the batch's sample size (the per-token loss, the
   gradient fairseq's optimizer sees). The model is in eval mode (no dropout). The batches are the subset's
   length-bucketed batches in a shuffled order with a fixed seed (``--seed``), so short and long sentences both count.
3. Pruning scope: every parameter tensor with two or more dimensions: token embeddings (a shared embedding or an
   output projection tied to it is one tensor and is counted once), learned positional embeddings if any, the
   attention projections (``q/k/v/out_proj``) and the feed-forward matrices (``fc1/fc2``) of the encoder and the
   decoder, and an untied output projection. Biases and LayerNorm parameters (1-D) are never pruned, nor are tensors
   that take no part in the forward pass (no gradient): fairseq 0.12's encoder layers hold BetterTransformer copies
   of their weights (``in_proj_weight``, ``out_proj_weight``, ``fc1_weight``, ``fc2_weight``) that the ordinary
   forward never reads; they are listed as ``excluded_unused_tensors`` in the JSON. The entries of
   all these tensors are ranked together (a global ranking, not tensor by tensor) by their score: sensitivity, or
   ``|theta|`` for magnitude pruning (the control). Ties are broken by position (a stable sort over the tensors in
   ``named_parameters`` order, each flattened), so the ranking is deterministic.
4. For each sparsity s in ``--sparsities`` (each in [0, 1)) and each method: zero the ``round(s * N)`` lowest-ranked
   of the N entries in scope (one-shot: the ranking comes from the unpruned model, no retraining or re-ranking),
   evaluate, then restore the weights. Metrics over the whole ``--subset``: the criterion's
   loss divided by its sample size (target tokens, unless the model was trained with ``--sentence-avg``), in base 2:
   what fairseq reports as ``valid_loss``; the NLL per target token (base 2) when the criterion reports it; and,
   unless ``--no-bleu``, sacreBLEU of the detokenised greedy (``--beam``) translations, produced in-process by
   fairseq's SequenceGenerator and scored as ``scripts/evaluate.py`` scores them (the data-bin's ``prep.json`` decides
   ``--remove-bpe``, detokenisation, lowercasing and the reference; without it the T- lines of the binarised target
   are the reference). The checkpoint file is only read.

Cost: the sensitivity is ``--batches`` forward/backward passes; every (method, sparsity) point, and the unpruned model,
is one pass over the subset for the loss and, with BLEU, one decoding of it. A heavily pruned model may translate
every sentence to the length limit (``--max-len-a``/``--max-len-b``, fairseq-generate's defaults 0 and 200): on a CPU
prefer ``--no-bleu`` or a lower limit; on a GPU a Multi30k/IWSLT'14 validation set is quick.

Outputs in ``--out``: ``redundancy.json`` (settings, the scope, per model: the unpruned metrics, per method and
sparsity: loss, nll_loss, BLEU, the measured fraction of zeros in the scope, the overlap of the two methods' pruned
sets; quantiles of log10 sensitivity per layer type), ``pruning_curves.png`` (loss, loss increase and BLEU against
sparsity: one colour per model, one line style per method), ``sensitivity_by_layer_type.png`` (histograms of log10
sensitivity per layer type: embeddings, attention, feed-forward; one colour per model), and a table on stdout.
Models named ``GROUP/NAME`` (``adam/seed1=... adam/seed2=... sage/seed1=...``) share their group's colour, and for
each group of two or more the JSON (``groups``) and the table add the mean ± standard deviation over its models of the
loss increase and BLEU drop at every sparsity.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "fairseq_plugins"
LAYER_TYPES = ("embeddings", "attention", "feed-forward", "other")
METHODS = ("sensitivity", "magnitude")
DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
SCOPE = (
    "all parameter tensors with dim >= 2 (token embeddings, learned positional embeddings, attention q/k/v/out_proj, "
    "feed-forward fc1/fc2, untied output projection) of encoder and decoder; biases and LayerNorm excluded; a shared "
    "(tied) tensor counted once; tensors unused in the forward pass (fairseq's BetterTransformer copies in the "
    "encoder layers) left out; entries ranked globally across these tensors, ties broken by position (stable sort)"
)


class AnalysisError(Exception):
    """A user-facing error; the message names the path or option at fault."""


def _evaluate_module():
    """scripts/evaluate.py (scripts/ is not a package; loaded by path): its BLEU settings and scoring are reused."""
    name = "fairseq_sage_evaluate_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("evaluate.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ----------------------------------------------------------------------------------------------------------------------
# Scope and ranking
# ----------------------------------------------------------------------------------------------------------------------


def layer_type(name: str) -> str:
    """embeddings, attention, feed-forward or other, from a fairseq transformer parameter name."""
    if "embed_tokens" in name or "embed_positions" in name or "output_projection" in name:
        return "embeddings"
    if "self_attn" in name or "encoder_attn" in name:
        return "attention"
    if ".fc1." in name or ".fc2." in name:
        return "feed-forward"
    return "other"


def pruned_parameters(model) -> list[tuple[str, object]]:
    """(name, parameter) of the tensors in scope, in ``named_parameters`` order; tied tensors appear once."""
    return [
        (name, p)
        for name, p in model.named_parameters()  # named_parameters() yields a shared tensor once
        if p.dim() >= 2 and "layer_norm" not in name and "layernorm" not in name.lower()
    ]


def ranking(scores: list) -> object:
    """Indices into the concatenation of the flattened score tensors, lowest score first, ties by position."""
    import torch

    flat = torch.cat([s.detach().reshape(-1).float().cpu() for s in scores])
    return torch.sort(flat, stable=True).indices


def num_pruned(sparsity: float, total: int) -> int:
    return min(total, int(round(sparsity * total)))


def prune_(params: list, order, k: int) -> None:
    """Zero the entries ``order[:k]`` (indices into the concatenated flattened ``params``), in place."""
    import torch

    if k == 0:
        return
    total = sum(p.numel() for p in params)
    mask = torch.zeros(total, dtype=torch.bool)
    mask[order[:k]] = True
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.view(-1).masked_fill_(mask[offset : offset + n].to(p.device), 0)
            offset += n


def overlap_fraction(order_a, order_b, k: int) -> float:
    """The fraction of the k entries pruned by ranking a that ranking b prunes too."""
    import torch

    mask = torch.zeros(order_a.numel(), dtype=torch.bool)
    mask[order_a[:k]] = True
    return int(mask[order_b[:k]].sum()) / k


def zero_fraction(params: list) -> float:
    zeros = sum(int((p == 0).sum()) for p in params)
    return zeros / sum(p.numel() for p in params)


# ----------------------------------------------------------------------------------------------------------------------
# Model, data, loss, sensitivity, BLEU
# ----------------------------------------------------------------------------------------------------------------------


def load(checkpoint: Path, data_bin: Path, use_cuda: bool):
    """(model, task, cfg, criterion) for a checkpoint, with the plugin imported and the data-bin overridden."""
    from fairseq import checkpoint_utils, utils

    utils.import_user_module(argparse.Namespace(user_dir=str(PLUGIN_DIR)))
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_bin)}
    )
    model = models[0].float()
    if use_cuda:
        model = model.cuda()
    model.eval()
    criterion = task.build_criterion(cfg.criterion)
    if use_cuda:
        criterion = criterion.cuda()
    criterion.eval()
    return model, task, cfg, criterion


def batches(task, model, subset: str, max_tokens: int, shuffle: bool, seed: int):
    from fairseq import utils

    if subset not in task.datasets:
        task.load_dataset(subset, combine=False, epoch=1)
    dataset = task.dataset(subset)
    itr = task.get_batch_iterator(
        dataset=dataset, max_tokens=max_tokens, max_positions=utils.resolve_max_positions(task.max_positions(),
        model.max_positions()), ignore_invalid_inputs=True, seed=seed, num_workers=0, disable_iterator_cache=True,
    )  # fmt: skip
    return itr.next_epoch_itr(shuffle=shuffle)


def _to(sample, use_cuda: bool):
    from fairseq import utils

    return utils.move_to_cuda(sample) if use_cuda else sample


def sensitivities(model, criterion, task, params, args, use_cuda: bool) -> tuple[list, list[bool]]:
    """(mean over ``args.batches`` batches of |theta * grad(per-token loss)| for each tensor of ``params``, whether
    each tensor took part in the forward pass at all: received a gradient)."""
    import torch

    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    used = [False] * len(params)
    n = 0
    for sample in batches(task, model, args.sensitivity_subset, args.max_tokens, shuffle=True, seed=args.seed):
        if n == args.batches:
            break
        if not sample or "net_input" not in sample:
            continue
        model.zero_grad(set_to_none=True)
        loss, sample_size, _ = criterion(model, _to(sample, use_cuda))
        (loss / sample_size).backward()
        with torch.no_grad():
            for i, (s, p) in enumerate(zip(sums, params, strict=True)):
                if p.grad is not None:
                    s.add_((p.detach().float() * p.grad.float()).abs())
                    used[i] = True
        n += 1
    model.zero_grad(set_to_none=True)
    if n == 0:
        raise AnalysisError(f"the {args.sensitivity_subset!r} split gave no batches")
    return [s / n for s in sums], used


def validation_loss(model, criterion, task, args, use_cuda: bool) -> dict:
    """The criterion's loss and NLL per target token (base 2) over the whole subset, as fairseq's validation."""
    import torch

    loss_sum = nll_sum = 0.0
    sample_size = ntokens = 0
    with torch.no_grad():
        for sample in batches(task, model, args.subset, args.max_tokens, shuffle=False, seed=args.seed):
            if not sample or "net_input" not in sample:
                continue
            _, size, log = criterion(model, _to(sample, use_cuda))
            loss_sum += float(log["loss"])
            nll_sum += float(log.get("nll_loss", float("nan")))
            sample_size += int(size)
            ntokens += int(log["ntokens"])
    loss = loss_sum / sample_size / math.log(2)
    nll = nll_sum / ntokens / math.log(2)
    return {"loss": loss, "nll_loss": None if math.isnan(nll) else nll}


class BleuScorer:
    """Greedy/beam translation of the subset in-process, scored by scripts/evaluate.py's sacreBLEU settings."""

    def __init__(self, task, args):
        ev = _evaluate_module()
        self.ev = ev
        ns = argparse.Namespace(
            data_bin=args.data_bin, subset=args.subset, source_lang=None, target_lang=None, remove_bpe=None, ref=None,
            tok_ref=None, lowercase=None, bleu_tok_kind=None, detok=None,
        )  # fmt: skip
        try:
            self.setup = ev.resolve_setup(ns)
        except ev.EvalError as e:
            raise AnalysisError(str(e)) from e
        self.refs = None
        if self.setup.ref is not None:
            if not Path(self.setup.ref).is_file():
                raise AnalysisError(f"the sacreBLEU reference {self.setup.ref} (from prep.json) does not exist")
            self.refs = ev.read_text_lines(self.setup.ref)
            n = len(task.dataset(args.subset))
            if len(self.refs) != n:
                raise AnalysisError(f"the reference {self.setup.ref} has {len(self.refs)} lines, {args.subset} has {n}")
        self.args = args

    def __call__(self, model, task, use_cuda: bool) -> dict:
        import torch
        from fairseq import utils
        from fairseq.dataclass.configs import GenerationConfig

        gen_cfg = GenerationConfig(beam=self.args.beam, max_len_a=self.args.max_len_a, max_len_b=self.args.max_len_b)
        generator = task.build_generator([model], gen_cfg)
        strip = getattr(generator, "symbols_to_strip_from_output", {generator.eos})
        tgt_dict = task.target_dictionary
        remove_bpe = self.setup.remove_bpe
        hyps: dict[int, str] = {}
        tgts: dict[int, str] = {}
        with torch.no_grad():
            for sample in batches(task, model, self.args.subset, self.args.max_tokens, False, self.args.seed):
                if not sample or "net_input" not in sample:
                    continue
                out = task.inference_step(generator, [model], _to(sample, use_cuda))
                for i, sid in enumerate(sample["id"].tolist()):
                    # the H- line text of fairseq-generate (utils.post_process_prediction's string; not that
                    # function itself: with --remove-bpe it re-encodes the string and adds its words to the dictionary)
                    hyp_tokens = out[i][0]["tokens"].int().cpu()
                    hyps[sid] = tgt_dict.string(hyp_tokens, remove_bpe, extra_symbols_to_ignore=strip)
                    target = utils.strip_pad(sample["target"][i], tgt_dict.pad()).int().cpu()
                    tgts[sid] = tgt_dict.string(target, remove_bpe, escape_unk=True, extra_symbols_to_ignore=strip)
        ids = sorted(hyps)
        hyp_lines = self.ev.detokenize([hyps[i] for i in ids], self.setup.detok, self.setup.tgt)
        if self.refs is not None:
            refs = [self.refs[i] for i in ids]
        else:
            refs = self.ev.detokenize([tgts[i] for i in ids], self.setup.detok, self.setup.tgt)
        sb = self.ev.sacrebleu_scores(hyp_lines, refs, self.setup.lowercase)
        return {"bleu": sb["sacrebleu"], "bleu_signature": sb["sacrebleu_signature"], "bleu_sentences": len(ids)}


# ----------------------------------------------------------------------------------------------------------------------
# Analysis of one model
# ----------------------------------------------------------------------------------------------------------------------


def quantiles_by_type(names: list[str], scores: list) -> tuple[dict, dict]:
    """(per layer type: count, zeros and quantiles of log10 sensitivity; per type: the log10 values for the plot)."""
    import torch

    grouped: dict[str, list] = {}
    for name, s in zip(names, scores, strict=True):
        grouped.setdefault(layer_type(name), []).append(s.detach().reshape(-1).float().cpu())
    summary, values = {}, {}
    for kind in LAYER_TYPES:
        if kind not in grouped:
            continue
        flat = torch.cat(grouped[kind])
        nonzero = flat[flat > 0]
        log10 = nonzero.log10()
        entry = {"entries": flat.numel(), "zeros": int(flat.numel() - nonzero.numel())}
        if log10.numel():
            qs = torch.quantile(
                log10[:: max(1, log10.numel() // 1_000_000)], torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
            )
            entry.update({"log10_mean": float(log10.mean()), **{f"log10_q{int(q * 100):02d}": float(v) for q, v in
                          zip((0.05, 0.25, 0.5, 0.75, 0.95), qs.tolist(), strict=True)}})  # fmt: skip
        summary[kind] = entry
        values[kind] = log10.numpy()
    return summary, values


def analyze_model(name: str, checkpoint: Path, args, use_cuda: bool, bleu_scorer_cache: dict) -> tuple[dict, dict]:
    import torch

    start = time.time()
    model, task, cfg, criterion = load(checkpoint, args.data_bin, use_cuda)
    for split in dict.fromkeys((args.subset, args.sensitivity_subset)):  # the BLEU scorer reads args.subset's size
        if split not in task.datasets:
            task.load_dataset(split, combine=False, epoch=1)
    candidates = pruned_parameters(model)
    sens, used = sensitivities(model, criterion, task, [p for _, p in candidates], args, use_cuda)
    unused = [n for (n, _), u in zip(candidates, used, strict=True) if not u]
    scope = [c for c, u in zip(candidates, used, strict=True) if u]
    sens = [s for s, u in zip(sens, used, strict=True) if u]
    names = [n for n, _ in scope]
    params = [p for _, p in scope]
    total = sum(p.numel() for p in params)
    note = f"; not used in the forward pass, left out: {', '.join(unused)}" if unused else ""
    print(
        f"analyze_redundancy: {name}: {checkpoint}: {len(params)} tensors, {total} entries in scope{note}", flush=True
    )
    orders = {}
    for method in args.methods:
        orders[method] = ranking(sens if method == "sensitivity" else [p.detach().abs() for p in params])
    originals = [p.detach().clone() for p in params]

    scorer = None
    if args.bleu:
        if "scorer" not in bleu_scorer_cache:  # the data-bin's settings and references, read once
            bleu_scorer_cache["scorer"] = BleuScorer(task, args)
        scorer = bleu_scorer_cache["scorer"]

    def measure() -> dict:
        m = validation_loss(model, criterion, task, args, use_cuda)
        if scorer is not None:
            m.update(scorer(model, task, use_cuda))
        return m

    def restore() -> None:
        with torch.no_grad():
            for p, o in zip(params, originals, strict=True):
                p.copy_(o)

    unpruned = measure()
    results: dict[str, list] = {}
    for method in args.methods:
        rows = []
        for s in args.sparsities:
            k = num_pruned(s, total)
            prune_(params, orders[method], k)
            row = {"sparsity": s, "n_pruned": k, "zero_fraction": zero_fraction(params), **measure()}
            row["loss_increase"] = row["loss"] - unpruned["loss"]
            if "bleu" in row:
                row["bleu_drop"] = unpruned["bleu"] - row["bleu"]
            rows.append(row)
            restore()
            print(f"analyze_redundancy: {name} {method} {s:.2f}: loss {row['loss']:.4f}"
                  + (f" BLEU {row['bleu']:.2f}" if "bleu" in row else ""), flush=True)  # fmt: skip
        results[method] = rows
    overlap = {}
    if set(METHODS) <= set(orders):
        for s in args.sparsities:
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
        "pruned_set_overlap_sensitivity_vs_magnitude": overlap,
        "log10_sensitivity_by_layer_type": summary,
        "sensitivity_batches": args.batches,
        "elapsed_s": round(time.time() - start, 1),
    }
    return record, values


# ----------------------------------------------------------------------------------------------------------------------
# Plots, table, main
# ----------------------------------------------------------------------------------------------------------------------

LINESTYLES = {"sensitivity": "-", "magnitude": "--"}


def group_of(name: str) -> str:
    """Models named GROUP/ANYTHING (e.g. adam/seed1, adam/seed2) form a group: one colour, one summary."""
    return name.split("/", 1)[0]


def group_summary(models: dict) -> dict:
    """Per group (of two or more models), method and sparsity: mean and standard deviation over the group's models of
    the loss increase and, where measured, the BLEU drop and BLEU."""
    import statistics

    groups: dict[str, list[str]] = {}
    for name in models:
        groups.setdefault(group_of(name), []).append(name)
    out = {}
    for group, names in groups.items():
        if len(names) < 2:
            continue
        out[group] = {"models": names}
        for method in models[names[0]]["results"]:
            rows = []
            for i, first in enumerate(models[names[0]]["results"][method]):
                row = {"sparsity": first["sparsity"]}
                for key in ("loss", "loss_increase", "bleu", "bleu_drop"):
                    values = [models[n]["results"][method][i].get(key) for n in names]
                    if all(isinstance(v, (int, float)) for v in values):
                        row[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values)}
                rows.append(row)
            out[group][method] = rows
    return out


def plot_curves(models: dict, path: Path, bleu: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "validation loss (base 2)"), ("loss_increase", "loss increase over unpruned")]
    if bleu:
        panels.append(("bleu", "BLEU (sacreBLEU)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(group_of(name) for name in models))
    color = {g: colors[i % len(colors)] for i, g in enumerate(groups)}
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        labelled = set()
        for name, rec in models.items():
            group = group_of(name)
            for method, rows in rec["results"].items():
                xs = [100 * r["sparsity"] for r in rows]
                ys = [r.get(key) for r in rows]
                shown = group if group != name else name  # a group's models share one legend entry per method
                ax.plot(xs, ys, LINESTYLES.get(method, ":"), marker="o", ms=3, color=color[group], alpha=0.8,
                        label=None if (shown, method) in labelled else f"{shown}, {method}")  # fmt: skip
                labelled.add((shown, method))
        ax.set_xlabel("sparsity (% of entries in scope zeroed)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Pruning the lowest-ranked weights (global ranking): sensitivity |theta*grad| vs magnitude |theta|")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sensitivities(values: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = [k for k in LAYER_TYPES if any(k in v and len(v[k]) for v in values.values())]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(4.5 * max(1, len(kinds)), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(group_of(name) for name in values))
    color = {g: colors[i % len(colors)] for i, g in enumerate(groups)}
    finite = [v for model in values.values() for v in model.values() if len(v)]
    lo = min(float(np.min(v)) for v in finite) if finite else -12
    hi = max(float(np.max(v)) for v in finite) if finite else 0
    bins = np.linspace(lo, hi + 1e-9, 60)
    for ax, kind in zip(axes[0], kinds, strict=False):
        for name, model in values.items():
            v = model.get(kind)
            if v is None or not len(v):
                continue
            ax.hist(v, bins=bins, density=True, histtype="step", lw=1.5, color=color[group_of(name)], alpha=0.8,
                    label=f"{name} (median {np.median(v):.2f})")  # fmt: skip
        ax.set_title(kind)
        ax.set_xlabel("log10 sensitivity |theta*grad| (non-zero entries)")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _save(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def table(models: dict) -> str:
    lines = [f"{'model':<16} {'method':<12} {'sparsity':>8} {'loss':>9} {'d_loss':>9} {'BLEU':>7} {'zeros':>7}"]
    for name, rec in models.items():
        for method, rows in rec["results"].items():
            for r in rows:
                bleu = f"{r['bleu']:7.2f}" if "bleu" in r else f"{'-':>7}"
                lines.append(f"{name:<16} {method:<12} {r['sparsity']:8.2f} {r['loss']:9.4f} {r['loss_increase']:9.4f} "
                             f"{bleu} {r['zero_fraction']:7.3f}")  # fmt: skip
    for group, rec in group_summary(models).items():
        lines.append(f"\n{group}: mean ± std over {len(rec['models'])} models ({', '.join(rec['models'])})")
        for method in (m for m in rec if m != "models"):
            for r in rec[method]:
                cells = [f"{key} {r[key]['mean']:.4f} ± {r[key]['std']:.4f}" for key in ("loss_increase", "bleu_drop")
                         if key in r]  # fmt: skip
                lines.append(f"  {method:<12} {r['sparsity']:4.2f}: " + ", ".join(cells))
    return "\n".join(lines)


def parse_checkpoints(values: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise AnalysisError(f"--checkpoints takes NAME=PATH, got {v!r}")
        if name in out:
            raise AnalysisError(f"--checkpoints: the name {name!r} is given twice")
        p = Path(path)
        if p.is_dir():
            for fname in ("checkpoint_best.pt", "checkpoint_last.pt"):
                if (p / fname).is_file():
                    p = p / fname
                    break
            else:
                raise AnalysisError(f"checkpoint {name}: {p} has neither checkpoint_best.pt nor checkpoint_last.pt")
        if not p.is_file():
            raise AnalysisError(f"checkpoint {name}: {p} does not exist")
        out[name] = p
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="analyze_redundancy", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )  # fmt: skip
    p.add_argument("--data-bin", type=Path, required=True, help="fairseq data-bin the checkpoints were trained on")
    p.add_argument(
        "--checkpoints",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="checkpoints to analyse (a file, or a save dir: checkpoint_best.pt, else checkpoint_last.pt)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--subset", default="valid", help="split for loss and BLEU (default valid)")
    p.add_argument(
        "--sensitivity-subset", default="train", help="split whose batches estimate the sensitivity (default train)"
    )
    p.add_argument("--batches", type=int, default=8, help="batches for the sensitivity estimate (default 8)")
    p.add_argument(
        "--sparsities",
        type=float,
        nargs="+",
        default=list(DEFAULT_SPARSITIES),
        help="fractions of the entries in scope to zero, each in [0, 1) (default 0 0.1 ... 0.6)",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="rankings (default both)")
    p.add_argument("--bleu", action=argparse.BooleanOptionalAction, default=True, help="measure BLEU (default on)")
    p.add_argument("--beam", type=int, default=1, help="beam size for BLEU (default 1: greedy)")
    p.add_argument("--max-len-a", type=float, default=0.0, help="generation max length a*src_len+b (default 0)")
    p.add_argument("--max-len-b", type=int, default=200, help="generation max length a*src_len+b (default 200)")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch (default 4096)")
    p.add_argument("--seed", type=int, default=1, help="seed of the sensitivity batches' order (default 1)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is available")
    args = p.parse_args(argv)  # fmt: skip
    for name in ("batches", "beam", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for s in args.sparsities:
        if not 0.0 <= s < 1.0:
            p.error(f"--sparsities: each must be in [0, 1), got {s:g}")
    args.sparsities = sorted(set(args.sparsities))
    args.methods = list(dict.fromkeys(args.methods))
    return args


def run(args) -> dict:
    import torch

    if not args.data_bin.is_dir():
        raise AnalysisError(f"--data-bin {args.data_bin} is not a folder")
    if not any(args.data_bin.glob("dict.*.txt")):
        raise AnalysisError(f"--data-bin {args.data_bin} is not a fairseq data-bin (no dict.*.txt)")
    for split in (args.subset, args.sensitivity_subset):
        if not any(args.data_bin.glob(f"{split}.*.idx")):
            raise AnalysisError(f"--data-bin {args.data_bin} has no binarised {split!r} split")
    checkpoints = parse_checkpoints(args.checkpoints)
    use_cuda = torch.cuda.is_available() and not args.cpu
    args.out.mkdir(parents=True, exist_ok=True)
    models, values, cache = {}, {}, {}
    for name, path in checkpoints.items():
        models[name], values[name] = analyze_model(name, path, args, use_cuda, cache)
    result = {
        "data_bin": str(args.data_bin.resolve()),
        "subset": args.subset,
        "sensitivity_subset": args.sensitivity_subset,
        "scope": SCOPE,
        "sensitivity": f"mean over {args.batches} batches of |theta * grad| of the per-token training loss, eval mode",
        "pruning": "one-shot: entries zeroed in ranking order of the unpruned model, weights restored after each level",
        "loss": "criterion loss per target token, base 2 (fairseq's valid_loss), over the whole subset",
        "bleu": (
            f"sacreBLEU of detokenised beam-{args.beam} output over the whole subset (scripts/evaluate.py settings)"
        )
        if args.bleu
        else None,  # fmt: skip
        "sparsities": args.sparsities,
        "methods": args.methods,
        "max_tokens": args.max_tokens,
        "device": "cuda" if use_cuda else "cpu",
        "models": models,
        "groups": group_summary(models),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ev = _evaluate_module()
    ev.write_atomic(args.out / "redundancy.json", json.dumps(result, indent=2) + "\n")
    plot_curves(models, args.out / "pruning_curves.png", args.bleu)
    plot_sensitivities(values, args.out / "sensitivity_by_layer_type.png")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except AnalysisError as e:
        print(f"analyze_redundancy: error: {e}", file=sys.stderr)
        return 1
    print(table(result["models"]))
    print(
        f"analyze_redundancy: wrote {args.out / 'redundancy.json'}, pruning_curves.png, sensitivity_by_layer_type.png"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
