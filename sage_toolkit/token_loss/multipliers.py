"""SAGE's multiplier on the rows of the embedding tensors, by the row's token frequency and whether its token is in
the batch: what step a rare token's embedding gets when it is trained.

A row of an embedding matrix (or of the output projection) is the weight of one token. For SAGE, the multiplier of an
entry is r = (|I - Ihat| + eps^2) / (Ihat + eps^2), the relative variation of its sensitivity I = |theta * g|
(../shared/docs/SAGE.md): largest for an entry whose gradient is near zero on most batches and large on a few, which is
how a rare token's row is trained. :func:`row_multipliers` measures it from a checkpoint trained with ``adam_sage`` or
``adamax_sage``:

1. The optimizer state saved in the checkpoint gives, for every SAGE tensor, the smoothed sensitivity Ibar and the
   step count, and its parameter group gives beta3, eps and the bias correction.
2. On ``batches`` batches of the train split (fairseq's batch iterator, shuffled with ``seed``), in train mode with
   dropout as in training and the gradient of the per-token loss (fairseq's normalisation), each SAGE tensor's r is
   computed by the float64 reference (``fairseq_plugins.optim.reference.sage_multiplier``, at full strength alpha = 1)
   and Ibar advances as in training; the weights are not changed.
3. For each embedding tensor whose rows are the source or target dictionary: every row's mean r over its entries,
   averaged per (band of the token's train count, token in the batch or not; padding is not a token) over rows and
   batches; and beside it the mean r over all entries of the other SAGE tensors (attention, feed-forward, norms), the
   typical step.
"""

from __future__ import annotations

from sage_toolkit.errors import ToolkitError

SAGE_OPTIMIZERS = ("adam_sage", "adamax_sage")


def _state_names(model, optimizer_state: dict) -> dict[int, tuple[str, dict]]:
    """{state index: (parameter name, its parameter group)}: the order in which fairseq's wrapper handed the model's
    trainable parameters to the optimizer (model order; with a selection, the selected tensors first)."""
    from fairseq_plugins.optim.selection import partition, selector

    names = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    groups = optimizer_state["param_groups"]
    if len(groups) == 1:
        order = names
    else:
        chosen, rest = partition(names, [n for n, _ in names], selector(groups[0]["sage_params"], "sage_params"))
        order = chosen + rest
    indices = [i for g in groups for i in g["params"]]
    if sorted(indices) != list(range(len(order))):
        raise ToolkitError(f"the checkpoint's optimizer holds {len(indices)} parameters, the model {len(order)}")
    out = {}
    for group in groups:
        for i in group["params"]:
            name, shape = order[i]
            state = optimizer_state["state"].get(i, {})
            saved = state.get("exp_avg_sens", state.get("exp_avg"))  # plain tensors have no exp_avg_sens
            if saved is not None and tuple(saved.shape) != shape:
                raise ToolkitError(f"the checkpoint's optimizer state {i} has shape {tuple(saved.shape)}, "
                                   f"but {name} has {shape}: cannot match the state to the parameters")  # fmt: skip
            out[i] = (name, group)
    return out


def row_multipliers(checkpoint: dict, model, criterion, task, counts: dict, edges: tuple, *, batches: int,
                    seed: int, max_tokens: int, use_cuda: bool) -> dict:  # fmt: skip
    """The measurement of the module docstring for one loaded checkpoint (``checkpoint``: its torch.load dict;
    ``counts``: train token counts per side); {"measured": False, "reason"} if it was not trained with SAGE."""
    import torch

    from fairseq_plugins.optim.reference import sage_multiplier
    from sage_toolkit.redundancy.model import batches as split_batches
    from sage_toolkit.redundancy.model import to_device
    from sage_toolkit.token_loss.analysis import band_labels, bands

    optimizer = checkpoint["cfg"]["optimizer"]["_name"]
    if optimizer not in SAGE_OPTIMIZERS:
        return {"measured": False, "reason": f"trained with {optimizer}, not a SAGE optimizer"}
    optimizer_state = checkpoint.get("last_optimizer_state")
    if not optimizer_state or "param_groups" not in optimizer_state:
        return {"measured": False, "reason": "the checkpoint holds no optimizer state"}
    params = dict(model.named_parameters())
    tracked = {}  # name -> (parameter, its state copy, group, step)
    for i, (name, group) in _state_names(model, optimizer_state).items():
        saved = optimizer_state["state"].get(i, {})
        if group["sage"] and saved.get("exp_avg_sens") is not None:
            state = {"exp_avg_sens": saved["exp_avg_sens"].double().to(params[name].device)}
            tracked[name] = (params[name], state, {**group, "sage_strength": 1.0}, int(saved["step"]))
    sizes = {"source": len(task.source_dictionary), "target": len(task.target_dictionary)}
    row_tensors = {name: side for name, (p, *_) in tracked.items() if (side := _row_side(name, p, sizes))}
    n_bands = len(edges) + 1
    sums = {name: {w: torch.zeros(n_bands, dtype=torch.float64) for w in ("in_batch", "not_in_batch")}
            for name in row_tensors}  # fmt: skip
    rows = {name: {w: torch.zeros(n_bands, dtype=torch.long) for w in ("in_batch", "not_in_batch")}
            for name in row_tensors}  # fmt: skip
    other_sum, other_n, measured = 0.0, 0, 0
    band_of = {side: bands(counts["src" if side == "source" else "tgt"], edges) for side in sizes}
    model.train()
    torch.manual_seed(seed)
    for sample in split_batches(task, model, "train", max_tokens, shuffle=True, seed=seed):
        if measured == batches:
            break
        if not sample or "net_input" not in sample:
            continue
        sample = to_device(sample, use_cuda)
        model.zero_grad()
        loss, sample_size, _ = criterion(model, sample)
        (loss / sample_size).backward()  # fairseq divides the summed gradient by the sample size
        source, target = sample["net_input"]["src_tokens"], sample["target"]
        present = {"source": source[source != task.source_dictionary.pad()],  # padding is not a token of the batch
                   "target": target[target != task.target_dictionary.pad()]}  # fmt: skip
        for name, (p, state, group, step) in tracked.items():
            if p.grad is None:
                raise ToolkitError(f"{name} is a SAGE tensor but got no gradient")
            r = sage_multiplier(p.detach().double(), p.grad.double(), state, group, step + measured + 1)
            side = row_tensors.get(name)
            if side is None:
                other_sum += float(r.sum())
                other_n += r.numel()
                continue
            in_batch = torch.zeros(p.shape[0], dtype=torch.bool, device=r.device)
            in_batch[present[side].flatten()] = True
            row_r = r.mean(dim=1).cpu()
            in_batch = in_batch.cpu()
            for where, mask in (("in_batch", in_batch), ("not_in_batch", ~in_batch)):
                sums[name][where] += torch.bincount(band_of[side][mask], weights=row_r[mask], minlength=n_bands)
                rows[name][where] += torch.bincount(band_of[side][mask], minlength=n_bands)
        measured += 1
    model.zero_grad()
    model.eval()
    if measured < batches:
        raise ToolkitError(f"--multiplier-batches {batches}: the train split has only {measured} batches")
    labels = band_labels(edges)

    def by_band(name: str, where: str) -> list[dict]:
        n, total = rows[name][where], sums[name][where]
        return [{"band": labels[b], "row_batches": int(n[b]), "r_mean": float(total[b] / n[b]) if n[b] else None}
                for b in range(n_bands)]  # fmt: skip

    tensors = {name: {"side": side, **{where: by_band(name, where) for where in ("in_batch", "not_in_batch")}}
               for name, side in row_tensors.items()}  # fmt: skip
    not_sage = sorted(n for n, p in params.items() if n not in tracked and _row_side(n, p, sizes))
    return {"measured": True, "optimizer": optimizer, "batches": measured, "beta3": _one(tracked, "beta3"),
            "bias_correction": _one(tracked, "bias_correction"), "tensors": tensors,
            "other_sage_tensors_r_mean": other_sum / other_n if other_n else None,
            "embedding_tensors_without_sage": not_sage}  # fmt: skip


def _row_side(name: str, p, sizes: dict) -> str | None:
    """The side ("source"/"target") of a token embedding or output projection whose rows are its dictionary."""
    side = "source" if name.startswith("encoder.") else "target" if name.startswith("decoder.") else None
    is_rows = "embed_tokens" in name or "output_projection" in name
    return side if side and is_rows and p.dim() == 2 and p.shape[0] == sizes[side] else None


def _one(tracked: dict, key: str):
    values = {group[key] for _, _, group, _ in tracked.values()}
    return values.pop() if len(values) == 1 else sorted(values)
