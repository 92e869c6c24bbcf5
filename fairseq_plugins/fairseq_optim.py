"""fairseq glue: `--optimizer adam_sage` and `--optimizer adamax_sage`, thin wrappers over `fairseq_plugins.optim`.

fairseq hands an optimizer a bare list of tensors. For a name-based ``--sage-params`` selection this module wraps
``Trainer._build_optimizer`` so that, while fairseq builds the optimizer, the model's ``named_parameters()`` are
known; the wrapper matches its tensors to them by identity (fp32 training, ``--memory-efficient-fp16/bf16``) or by
position and shape (the fp32 copies of ``--fp16-no-flatten-grads``). fairseq's default ``--fp16``/``--bf16`` hands
over one flattened tensor, where a per-tensor selection is refused with the alternatives named.
"""

# no `from __future__ import annotations`: fairseq reads the config dataclasses' field types at run time

import ast
import contextvars
import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, List  # noqa: UP035

from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from .optim import AdamaxSAGE, AdamSAGE
from .optim._functional import IMPLEMENTATIONS
from .optim.selection import check_matches, describe_choices, selector

_NAMED_PARAMS: contextvars.ContextVar[list | None] = contextvars.ContextVar("fairseq_sage_named_params", default=None)


def _install_trainer_hook() -> None:
    from fairseq.trainer import Trainer

    original = Trainer._build_optimizer
    if getattr(original, "_records_param_names", False):
        return

    @functools.wraps(original)
    def _build_optimizer(self):
        named = [(n, p) for n, p in self._model.named_parameters() if p.requires_grad]
        named += [(f"criterion.{n}", p) for n, p in self._criterion.named_parameters() if p.requires_grad]
        token = _NAMED_PARAMS.set(named)
        try:
            return original(self)
        finally:
            _NAMED_PARAMS.reset(token)

    _build_optimizer._records_param_names = True
    Trainer._build_optimizer = _build_optimizer


_install_trainer_hook()


def _param_names(params: Sequence[Any]) -> list[str] | None:
    """Names of ``params`` while fairseq builds the optimizer, or None where they cannot be known."""
    named = _NAMED_PARAMS.get()
    if named is None:
        return None
    if any("flat_param" in n for n, _ in named):
        return None  # fully sharded data parallel: the model's tensors are already flattened
    by_id = {id(p): n for n, p in named}
    if all(id(p) in by_id for p in params):
        return [by_id[id(p)] for p in params]
    if len(params) == len(named) and all(p.shape == q.shape for p, (_, q) in zip(params, named, strict=True)):
        return [n for n, _ in named]  # per-tensor fp32 master copies, in model order
    return None


def _parse_betas(value: Any, option: str = "--adam-betas") -> tuple[float, float]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{option}: cannot parse {value!r}; write it as '(0.9, 0.98)'") from None
    elif not isinstance(value, (tuple, list)):
        value = OmegaConf.to_container(value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{option} must be a pair like '(0.9, 0.98)', got {value!r}")
    return float(value[0]), float(value[1])


@dataclass
class _SAGECommonConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas of the first and second moments"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon of the denominator; eps**2 in the multiplier"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    sage_beta3: float = field(
        default=0.75, metadata={"help": "EMA coefficient of the sensitivity |theta*grad|, in [0, 1); paper: 0.6-0.9"}
    )
    sage_strength: float = field(
        default=1.0,
        metadata={"help": "SAGE strength alpha: multiplier 1+alpha*(r-1); 0 = base optimizer (a scheduler may set it)"},
    )
    sage_params: str = field(
        default="all", metadata={"help": f"tensors that get SAGE, the rest the plain update: {describe_choices()}"}
    )
    sage_impl: str = field(default="auto", metadata={"help": f"kernel: {', '.join(IMPLEMENTATIONS)}"})
    lr: List[float] = II("optimization.lr")  # noqa: UP006 - fairseq parses typing.List, not list[]


@dataclass
class FairseqAdamSAGEConfig(_SAGECommonConfig):
    sage_no_bias_correction: bool = field(
        default=False, metadata={"help": "do not divide the smoothed sensitivity by 1-beta3^t"}
    )


@dataclass
class FairseqAdamaxSAGEConfig(_SAGECommonConfig):
    sage_bias_correction: bool = field(
        default=False, metadata={"help": "divide the smoothed sensitivity by 1-beta3^t (off in the authors' Adamax)"}
    )


class _FairseqSAGE(FairseqOptimizer):
    optimizer_class: type

    def __init__(self, cfg, params):
        super().__init__(cfg)
        params = list(params)
        self._optimizer = self.optimizer_class(self._param_groups(params), **self.optimizer_config)

    def _param_groups(self, params: list[Any]) -> list[dict[str, Any]]:
        choice = self.cfg.sage_params
        selects = selector(choice, "--sage-params")
        if selects is None or (params and isinstance(params[0], dict)):
            return params if params and isinstance(params[0], dict) else [{"params": params, "sage": True}]
        names = _param_names(params)
        if names is None:
            raise ValueError(
                f"--sage-params {choice} selects tensors by name, but fairseq handed the optimizer flattened "
                "parameters (--fp16/--bf16 and --ddp-backend fully_sharded flatten them). Use --memory-efficient-fp16 "
                "(or --memory-efficient-bf16), or add --fp16-no-flatten-grads, or use --sage-params all."
            )
        check_matches(choice, names, "--sage-params")
        chosen = [p for p, n in zip(params, names, strict=True) if selects(n)]
        rest = [p for p, n in zip(params, names, strict=True) if not selects(n)]
        return [g for g in ({"params": chosen, "sage": True}, {"params": rest, "sage": False}) if g["params"]]

    @property
    def optimizer_config(self) -> dict[str, Any]:
        """Constructor kwargs of the inner optimizer (fairseq's fp16/AMP/OSS wrappers rebuild it from these)."""
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr
        return dict(
            lr=lr,
            betas=_parse_betas(self.cfg.adam_betas),
            eps=self.cfg.adam_eps,
            weight_decay=self.cfg.weight_decay,
            beta3=self.cfg.sage_beta3,
            bias_correction=self._bias_correction,
            sage_strength=self.cfg.sage_strength,
            impl=self.cfg.sage_impl,
        )

    @property
    def supports_flat_params(self) -> bool:
        return True  # element-wise; flat parameters only restrict --sage-params (checked at construction)

    def set_sage_strength(self, alpha: float) -> None:
        self._optimizer.set_sage_strength(alpha)


@register_optimizer("adam_sage", dataclass=FairseqAdamSAGEConfig)
class FairseqAdamSAGE(_FairseqSAGE):
    """AdamW with SAGE (``fairseq_plugins.optim.AdamSAGE``). Checkpoints record this class name: do not rename."""

    optimizer_class = AdamSAGE

    @property
    def _bias_correction(self) -> bool:
        return not self.cfg.sage_no_bias_correction


@register_optimizer("adamax_sage", dataclass=FairseqAdamaxSAGEConfig)
class FairseqAdamaxSAGE(_FairseqSAGE):
    """Adamax with SAGE (``fairseq_plugins.optim.AdamaxSAGE``). Checkpoints record this class name: do not rename."""

    optimizer_class = AdamaxSAGE

    @property
    def _bias_correction(self) -> bool:
        return self.cfg.sage_bias_correction
