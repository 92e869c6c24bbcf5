"""The sensitivity ``|theta * grad|`` of every weight entry, and its distribution per layer type.

The gradient is that of the criterion's loss divided by the batch's sample size (the per-token loss, the gradient
fairseq's optimizer sees), in eval mode (no dropout), averaged over a number of batches of a split (by default
``train``: not the split the loss is measured on, where every embedding row of a token absent from the measured text
would score 0 and be pruned for free). The batches are the split's length-bucketed batches in a shuffled order with a
fixed seed, so short and long sentences both count.
"""

from __future__ import annotations

from sage_toolkit.errors import ToolkitError
from sage_toolkit.redundancy.model import batches, to_device
from sage_toolkit.redundancy.pruning import LAYER_TYPES, layer_type

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def sensitivities(
    model, criterion, task, params, *, subset: str, batches_wanted: int, max_tokens: int, seed: int, use_cuda: bool
) -> tuple[list, list[bool]]:
    """(mean over ``batches_wanted`` batches of ``subset`` of |theta * grad(per-token loss)| for each tensor of
    ``params``, whether each tensor took part in the forward pass at all: received a gradient). No gradient is left
    behind on the model."""
    import torch

    sums = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    used = [False] * len(params)
    n = 0
    for sample in batches(task, model, subset, max_tokens, shuffle=True, seed=seed):
        if n == batches_wanted:
            break
        if not sample or "net_input" not in sample:
            continue
        model.zero_grad(set_to_none=True)
        loss, sample_size, _ = criterion(model, to_device(sample, use_cuda))
        (loss / sample_size).backward()
        with torch.no_grad():
            for i, (s, p) in enumerate(zip(sums, params, strict=True)):
                if p.grad is not None:
                    s.add_((p.detach().float() * p.grad.float()).abs())
                    used[i] = True
        n += 1
    model.zero_grad(set_to_none=True)
    if n == 0:
        raise ToolkitError(f"the {subset!r} split gave no batches")
    return [s / n for s in sums], used


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
            qs = torch.quantile(log10[:: max(1, log10.numel() // 1_000_000)], torch.tensor(QUANTILES))
            entry["log10_mean"] = float(log10.mean())
            entry.update({f"log10_q{int(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs.tolist(), strict=True)})
        summary[kind] = entry
        values[kind] = log10.numpy()
    return summary, values
