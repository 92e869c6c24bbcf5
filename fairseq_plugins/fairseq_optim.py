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
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, List  # noqa: UP035

from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II, OmegaConf

from .optim import AdamaxSAGE, AdamSAGE
from .optim._functional import IMPLEMENTATIONS, why_unavailable
from .optim.options import check_options
from .optim.saved_state import SelectionChangedError
from .optim.selection import check_matches, describe_choices, partition, selector

logger = logging.getLogger(__name__)

# the inner optimizer's keywords -> the flags a fairseq-train user typed (errors and resume messages name these)
FLAGS = {"lr": "--lr", "betas": "--adam-betas", "eps": "--adam-eps", "weight_decay": "--weight-decay",
         "beta3": "--sage-beta3", "sage_strength": "--sage-strength", "impl": "--sage-impl"}  # fmt: skip

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
    """Resume rules (``load_state_dict``): the state (moments, step counts) comes from the checkpoint; every option
    of this optimizer comes from the current configuration, which is also what the next checkpoint records:
    ``--adam-betas``, ``--adam-eps``, ``--weight-decay``, ``--sage-beta3``, the bias-correction flag, ``--sage-impl``
    and ``--sage-strength`` (unless a SAGE scheduler sets the strength), each change logged with its old and new
    value. The learning rate is the scheduler's, as in fairseq. ``--sage-params`` must be the one the checkpoint was
    made with: a changed selection is refused, naming ``--reset-optimizer``."""

    optimizer_class: type
    _bias_flag: str

    def __init__(self, cfg, params):
        super().__init__(cfg)
        params = list(params)
        config = self.optimizer_config
        check_options(config, FLAGS)
        tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
        reason = why_unavailable(config["impl"], tensors)
        if reason is not None:  # at start-up, not at the first update
            raise ValueError(
                f"--sage-impl {config['impl']} cannot run here: {reason}. --sage-impl auto picks the fastest kernel "
                "that runs (triton on CUDA, fused on CPU)"
            )
        groups, names = self._param_groups(params)
        self._optimizer = self.optimizer_class(groups, **config)
        if names is not None:
            self._optimizer.name_parameters(params, names)

    def _param_groups(self, params: list[Any]) -> tuple[list[dict[str, Any]], list[str] | None]:
        choice = self.cfg.sage_params
        selects = selector(choice, "--sage-params")
        if params and isinstance(params[0], dict):
            return [{"sage_params": choice, **g} for g in params], None
        names = _param_names(params)
        if selects is None:
            return [{"params": params, "sage": True, "sage_params": choice}], names
        if names is None:
            raise ValueError(
                f"--sage-params {choice} selects tensors by name, but fairseq handed the optimizer flattened "
                "parameters (--fp16/--bf16 and --ddp-backend fully_sharded flatten them). Use --memory-efficient-fp16 "
                "(or --memory-efficient-bf16), or add --fp16-no-flatten-grads, or use --sage-params all."
            )
        check_matches(choice, names, "--sage-params")
        chosen, rest = partition(params, names, selects)
        groups = ({"params": chosen, "sage": True}, {"params": rest, "sage": False})
        return [{**g, "sage_params": choice} for g in groups if g["params"]], names

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """fairseq's load, with the resume rules of the class docstring; then ``--optimizer-overrides`` as fairseq.
        The configuration replaces the saved options before the inner optimizer checks and loads the state."""
        config = self._resumed_configuration()
        saved_groups = state_dict.get("param_groups", [])
        changes = self._configuration_changes(saved_groups, config)
        try:
            self.optimizer.load_state_dict({**state_dict, "param_groups": [{**g, **config} for g in saved_groups]})
        except SelectionChangedError as exc:
            raise ValueError(
                f"--sage-params {self.cfg.sage_params!r} cannot resume this checkpoint: {exc}. Resume with the "
                "checkpoint's --sage-params, or pass --reset-optimizer to start the optimizer state afresh (Adam "
                "moments and SAGE state are then lost). To stop SAGE mid-run, keep --sage-params and set "
                "--sage-strength 0."
            ) from None
        for change in changes:
            logger.info(change)
        if optimizer_overrides:
            for group in self.param_groups:
                group.update(optimizer_overrides)

    def _resumed_configuration(self) -> dict[str, Any]:
        """The options a resumed run takes from the command line: all but the scheduler's (lr; the strength where a
        SAGE scheduler sets it at every update)."""
        config = self.optimizer_config
        config.pop("lr")
        if getattr(self, "strength_scheduler", None):
            config.pop("sage_strength")
        return config

    def _configuration_changes(self, saved_groups: list[dict[str, Any]], config: dict[str, Any]) -> list[str]:
        """One log line per option whose saved value differs from the command line's."""
        flags = {**FLAGS, "bias_correction": f"the sensitivity bias correction ({self._bias_flag})"}
        changes = []
        for key, value in config.items():
            saved = {tuple(g[key]) if key == "betas" else g[key] for g in saved_groups if key in g}
            if saved and saved != {value}:
                was = ", ".join(map(str, sorted(saved, key=str)))
                line = f"{flags[key]} was {was} in the checkpoint, now {value} (command line)"
                changes.append(f"{self.cfg._name}: {line}")
        return changes

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
    _bias_flag = "--sage-no-bias-correction"

    @property
    def _bias_correction(self) -> bool:
        return not self.cfg.sage_no_bias_correction


@register_optimizer("adamax_sage", dataclass=FairseqAdamaxSAGEConfig)
class FairseqAdamaxSAGE(_FairseqSAGE):
    """Adamax with SAGE (``fairseq_plugins.optim.AdamaxSAGE``). Checkpoints record this class name: do not rename."""

    optimizer_class = AdamaxSAGE
    _bias_flag = "--sage-bias-correction"

    @property
    def _bias_correction(self) -> bool:
        return self.cfg.sage_bias_correction
