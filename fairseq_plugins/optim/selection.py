"""Which parameter tensors get SAGE: ``all`` (default), a named preset, or ``regex:PATTERN`` over parameter names.

Tensors that are not selected take the plain base update (Adam or Adamax) while sharing the optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

# The authors' GLUE code applied SAGE to BERT's attention and feed-forward matrices and their biases only. The pattern
# covers the same projections under fairseq's names (self_attn / encoder_attn q,k,v,out_proj; fc1, fc2), torch's
# nn.MultiheadAttention (in_proj_*, out_proj) and Hugging Face BERT (attention.self.query/key/value,
# attention.output.dense, intermediate.dense, output.dense).
ATTN_FFN_PATTERN = (
    r"(^|\.)(self_attn|encoder_attn|attn)\.(q_proj|k_proj|v_proj|out_proj|in_proj_weight|in_proj_bias)\b"
    r"|(^|\.)fc[12]\.(weight|bias)$"
    r"|(^|\.)attention\.(self\.(query|key|value)|output\.dense)\.(weight|bias)$"
    r"|(^|\.)(intermediate|output)\.dense\.(weight|bias)$"
)

# Token and position embeddings and the output projection (tied to the target embedding in most fairseq models): the
# tensors that hold most entries of a small translation model, and whose rows of rare tokens see few gradients.
# diagnostics.layer_kind calls these "embed".
EMBED_PATTERN = r"(^|\.)(embed_tokens|embed_positions|output_projection|embedding|embeddings)\b"

PRESETS: dict[str, str | None] = {
    "all": None,  # every tensor; needs no names
    "attn_ffn": ATTN_FFN_PATTERN,
    "no_embed": rf"^(?!.*{EMBED_PATTERN})",  # every tensor but the embeddings (and the output projection)
    "none": r"(?!)",  # no tensor: the plain base optimizer with SAGE's bookkeeping off (an ablation baseline)
}
REGEX_PREFIX = "regex:"


def describe_choices() -> str:
    return ", ".join(PRESETS) + f", or {REGEX_PREFIX}PATTERN"


def parse_selection(value: str, option: str = "sage_params") -> re.Pattern[str] | None:
    """Validate a selection string; returns the compiled pattern, or None for ``all``."""
    if not isinstance(value, str):
        raise ValueError(f"{option} must be a string ({describe_choices()}), got {value!r}")
    if value.startswith(REGEX_PREFIX):
        pattern = value[len(REGEX_PREFIX) :]
        if not pattern:
            raise ValueError(f"{option}={value!r}: empty regular expression")
        try:
            return re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{option}={value!r}: invalid regular expression ({exc})") from None
    if value not in PRESETS:
        raise ValueError(f"{option}={value!r}: unknown preset; choose {describe_choices()}")
    preset = PRESETS[value]
    return None if preset is None else re.compile(preset)


def selector(value: str, option: str = "sage_params") -> Callable[[str], bool] | None:
    """A predicate over parameter names, or None when every tensor is selected (``all``)."""
    pattern = parse_selection(value, option)
    return None if pattern is None else (lambda name: pattern.search(name) is not None)


def partition(items: Sequence, names: Sequence[str], selects: Callable[[str], bool]) -> tuple[list, list]:
    """(the items whose name ``selects`` picks, the others), each in the given order: the optimizer's two parameter
    groups, SAGE then plain, whose order its saved state follows."""
    chosen = [item for item, name in zip(items, names, strict=True) if selects(name)]
    rest = [item for item, name in zip(items, names, strict=True) if not selects(name)]
    return chosen, rest


def check_matches(value: str, names: Sequence[str], option: str = "sage_params") -> None:
    """A regex that selects nothing is almost certainly a typo: refuse it (the ``none`` preset says it on purpose)."""
    pred = selector(value, option)
    if pred is None or value == "none":
        return
    if not any(pred(n) for n in names):
        example = ", ".join(list(names)[:4])
        raise ValueError(f"{option}={value!r} matches no parameter name (names look like: {example}, ...)")
