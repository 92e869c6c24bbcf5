"""SAGE's multiplier on the rows of the embedding tensors, by the row's token frequency and whether its token is in
the batch: what step a rare token's embedding gets when it is trained. The multiplier of an entry is
r = (|I - Ihat| + eps^2) / (Ihat + eps^2) (docs/pytorch.md, "The update"); :func:`row_multipliers` measures it from a
checkpoint trained with ``adam_sage`` or ``adamax_sage``:

1. the optimizer state saved in the checkpoint gives each SAGE tensor's smoothed sensitivity, step and group options;
2. on ``batches`` train batches (train mode, fairseq's loss normalisation) each SAGE tensor's r comes from the float64
   reference (``fairseq_plugins.optim.reference.sage_multiplier``, strength 1) and the smoothed sensitivity advances
   as in training; the weights are not changed;
3. per embedding tensor whose rows are a dictionary: the rows' mean r per (frequency band, token in the batch or not),
   and beside it the mean r of all other SAGE tensors' entries, the typical step.
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
    from sage_toolkit.token_loss.analysis import band_labels, bands

    optimizer = checkpoint["cfg"]["optimizer"]["_name"]
    if optimizer not in SAGE_OPTIMIZERS:
        return {"measured": False, "reason": f"trained with {optimizer}, not a SAGE optimizer"}
    optimizer_state = checkpoint.get("last_optimizer_state")
    if not optimizer_state or "param_groups" not in optimizer_state:
        return {"measured": False, "reason": "the checkpoint holds no optimizer state"}
    params = dict(model.named_parameters())
    tracked = _tracked_tensors(model, optimizer_state)
    sizes = {"source": len(task.source_dictionary), "target": len(task.target_dictionary)}
    row_tensors = {name: side for name, (p, *_) in tracked.items() if (side := _row_side(name, p, sizes))}
    band_of = {side: bands(counts["src" if side == "source" else "tgt"], edges) for side in sizes}
    tally = _Tally(row_tensors, band_of, len(edges) + 1)
    measured = _measure(model, criterion, task, tracked, tally, batches=batches, seed=seed, max_tokens=max_tokens,
                        use_cuda=use_cuda)  # fmt: skip
    if measured < batches:
        raise ToolkitError(f"--multiplier-batches {batches}: the train split has only {measured} batches")
    not_sage = sorted(n for n, p in params.items() if n not in tracked and _row_side(n, p, sizes))
    return {"measured": True, "optimizer": optimizer, "batches": measured, "beta3": _one(tracked, "beta3"),
            "bias_correction": _one(tracked, "bias_correction"), "tensors": tally.tensors(band_labels(edges)),
            "other_sage_tensors_r_mean": tally.other_mean(),
            "embedding_tensors_without_sage": not_sage}  # fmt: skip


def _tracked_tensors(model, optimizer_state: dict) -> dict[str, tuple]:
    """{name: (parameter, a float64 copy of its smoothed sensitivity, its group at full strength, its step)} for
    every SAGE tensor of the saved state (step 1)."""
    params = dict(model.named_parameters())
    tracked = {}
    for i, (name, group) in _state_names(model, optimizer_state).items():
        saved = optimizer_state["state"].get(i, {})
        if group["sage"] and saved.get("exp_avg_sens") is not None:
            state = {"exp_avg_sens": saved["exp_avg_sens"].double().to(params[name].device)}
            tracked[name] = (params[name], state, {**group, "sage_strength": 1.0}, int(saved["step"]))
    return tracked


def _measure(model, criterion, task, tracked: dict, tally: _Tally, *, batches: int, seed: int, max_tokens: int,
             use_cuda: bool) -> int:  # fmt: skip
    """Step 2: each tracked tensor's multiplier on up to ``batches`` train batches, into ``tally``; returns how many
    batches there were. The weights are not changed."""
    import torch

    from fairseq_plugins.optim.reference import sage_multiplier
    from sage_toolkit.redundancy.model import batches as split_batches
    from sage_toolkit.redundancy.model import to_device

    measured = 0
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
            tally.add(name, sage_multiplier(p.detach().double(), p.grad.double(), state, group, step + measured + 1),
                      present)  # fmt: skip
        measured += 1
    model.zero_grad()
    model.eval()
    return measured


class _Tally:
    """Step 3's sums: per row tensor, band of the row's token and whether the token is in the batch, the rows' mean
    multipliers; over the other SAGE tensors, all their entries'."""

    WHERE = ("in_batch", "not_in_batch")

    def __init__(self, row_tensors: dict[str, str], band_of: dict, n_bands: int):
        import torch

        self.row_tensors, self.band_of, self.n_bands = row_tensors, band_of, n_bands
        self.sums = {name: {w: torch.zeros(n_bands, dtype=torch.float64) for w in self.WHERE} for name in row_tensors}
        self.rows = {name: {w: torch.zeros(n_bands, dtype=torch.long) for w in self.WHERE} for name in row_tensors}
        self.other_sum, self.other_n = 0.0, 0

    def add(self, name: str, r, present: dict) -> None:
        """One batch's multipliers ``r`` of tensor ``name``; ``present``: the tokens of the batch per side."""
        import torch

        side = self.row_tensors.get(name)
        if side is None:
            self.other_sum += float(r.sum())
            self.other_n += r.numel()
            return
        in_batch = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
        in_batch[present[side].flatten()] = True
        row_r = r.mean(dim=1).cpu()
        in_batch = in_batch.cpu()
        for where, mask in (("in_batch", in_batch), ("not_in_batch", ~in_batch)):
            band = self.band_of[side][mask]
            self.sums[name][where] += torch.bincount(band, weights=row_r[mask], minlength=self.n_bands)
            self.rows[name][where] += torch.bincount(band, minlength=self.n_bands)

    def tensors(self, labels: list[str]) -> dict:
        def by_band(name: str, where: str) -> list[dict]:
            n, total = self.rows[name][where], self.sums[name][where]
            return [{"band": labels[b], "row_batches": int(n[b]), "r_mean": float(total[b] / n[b]) if n[b] else None}
                    for b in range(self.n_bands)]  # fmt: skip

        return {name: {"side": side, **{where: by_band(name, where) for where in self.WHERE}}
                for name, side in self.row_tensors.items()}  # fmt: skip

    def other_mean(self) -> float | None:
        return self.other_sum / self.other_n if self.other_n else None


def _row_side(name: str, p, sizes: dict) -> str | None:
    """The side ("source"/"target") of a token embedding or output projection whose rows are its dictionary."""
    side = "source" if name.startswith("encoder.") else "target" if name.startswith("decoder.") else None
    is_rows = "embed_tokens" in name or "output_projection" in name
    return side if side and is_rows and p.dim() == 2 and p.shape[0] == sizes[side] else None


def _one(tracked: dict, key: str):
    values = {group[key] for _, _, group, _ in tracked.values()}
    return values.pop() if len(values) == 1 else sorted(values)
