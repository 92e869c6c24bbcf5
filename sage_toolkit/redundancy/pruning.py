"""Which weights are pruned, in which order, and pruning itself.

Scope: every parameter tensor with two or more dimensions: token embeddings (a shared embedding or an output
projection tied to it is one tensor and is counted once), learned positional embeddings if any, the attention
projections (``q/k/v/out_proj``) and the feed-forward matrices (``fc1/fc2``) of the encoder and the decoder, and an
untied output projection. Biases and LayerNorm parameters (1-D) are never pruned, nor are tensors that take no part in
the forward pass (no gradient; the analysis leaves them out). The entries of all these tensors are ranked together (a
global ranking, not tensor by tensor) by their score: sensitivity, or ``|theta|`` for magnitude pruning (the control).
Ties are broken by position (a stable sort over the tensors in ``named_parameters`` order, each flattened), so the
ranking is deterministic. Pruning at sparsity s zeroes the ``round(s * N)`` lowest-ranked of the N entries in scope.
"""

from __future__ import annotations

LAYER_TYPES = ("embeddings", "attention", "feed-forward", "other")
SCOPE = (
    "all parameter tensors with dim >= 2 (token embeddings, learned positional embeddings, attention q/k/v/out_proj, "
    "feed-forward fc1/fc2, untied output projection) of encoder and decoder; biases and LayerNorm excluded; a shared "
    "(tied) tensor counted once; tensors unused in the forward pass (fairseq's BetterTransformer copies in the "
    "encoder layers) left out; entries ranked globally across these tensors, ties broken by position (stable sort)"
)


TYPE_OF_KIND = {"embed": "embeddings", "attn": "attention", "ffn": "feed-forward"}


def layer_type(name: str) -> str:
    """embeddings, attention, feed-forward or other, from a parameter name: the optimizer diagnostics' classification
    (:func:`fairseq_plugins.optim.diagnostics.layer_kind`), so both speak of the same layer types."""
    from fairseq_plugins.optim.diagnostics import layer_kind  # torch: imported where tensors are about anyway

    return TYPE_OF_KIND.get(layer_kind(name), "other")


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
