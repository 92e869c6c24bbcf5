"""SAGE optimizers as plain ``torch.optim.Optimizer`` classes: ``AdamSAGE`` and ``AdamaxSAGE``. No fairseq import."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from .diagnostics import SAGEStatsMixin
from .selection import check_matches, selector


def _check_range(name: str, value: Any, low: float, high: float | None = None) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low
    if ok and high is not None:
        ok = value < high
    if not ok:
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def _check_betas(betas: Any) -> tuple[float, float]:
    try:
        beta1, beta2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair of floats, got {betas!r}") from None
    _check_range("betas[0]", beta1, 0.0, 1.0)
    _check_range("betas[1]", beta2, 0.0, 1.0)
    return beta1, beta2


class _SAGEBase(SAGEStatsMixin, torch.optim.Optimizer):
    """Shared machinery: option checks, tensor selection (``sage`` flag per group), state and dispatch."""

    _second_moment: str  # name of the second state tensor ("exp_avg_sq" or "exp_inf")
    _functional: Callable[..., None]

    # capabilities read by fairseq's wrappers: element-wise, so flat and fp16 (upcast) parameters work
    supports_memory_efficient_fp16 = True
    supports_flat_params = True

    def __init__(self, params, lr, betas, eps, weight_decay, beta3, bias_correction, sage_strength, sage_params, impl):
        _check_range("lr", lr, 0.0)
        _check_range("eps", eps, 0.0)
        _check_range("weight_decay", weight_decay, 0.0)
        _check_range("beta3", beta3, 0.0, 1.0)
        _check_range("sage_strength", sage_strength, 0.0)
        if impl not in F.IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {F.IMPLEMENTATIONS}, got {impl!r}")
        self._selects = selector(sage_params)  # raises ValueError for an unknown preset or a bad regex
        self._sage_params = sage_params
        self._selected_names: list[str] = []
        self._all_names: list[str] = []
        defaults = dict(
            lr=lr,
            betas=_check_betas(betas),
            eps=eps,
            weight_decay=weight_decay,
            beta3=beta3,
            bias_correction=bool(bias_correction),
            sage_strength=float(sage_strength),
            sage=True,
            impl=impl,
        )
        super().__init__(params, defaults)
        if self._selects is not None:
            check_matches(sage_params, self._all_names)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; with a ``sage_params`` selection, split it into a SAGE part and a plain part by name."""
        if "betas" in param_group:
            param_group["betas"] = _check_betas(param_group["betas"])
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        if "sage" in param_group or self._selects is None:
            super().add_param_group({**param_group, "params": params})
            return
        if not params or not all(isinstance(p, tuple) and len(p) == 2 for p in params):
            raise ValueError(
                f"sage_params={self._sage_params!r} selects tensors by name: pass named parameters "
                "(model.named_parameters()), or mark groups with sage=True/False, or use sage_params='all'"
            )
        self._all_names += [n for n, _ in params]
        chosen = [(n, p) for n, p in params if self._selects(n)]
        rest = [(n, p) for n, p in params if not self._selects(n)]
        self._selected_names += [n for n, _ in chosen]
        for part, flag in ((chosen, True), (rest, False)):
            if part:
                super().add_param_group({**param_group, "params": part, "sage": flag})

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # states saved before these options existed
            group.setdefault("sage_strength", 1.0)
            group.setdefault("sage", True)
            group.setdefault("impl", "auto")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for saved, group in zip(state_dict.get("param_groups", []), self.param_groups, strict=False):
            for key in ("sage_strength", "sage", "impl", "bias_correction", "beta3"):
                saved.setdefault(key, group[key])
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:  # a SAGE group loaded from a plain-Adam state: start the sensitivity EMA
                state = self.state.get(p)
                if state and group["sage"] and "exp_avg_sens" not in state:
                    state["exp_avg_sens"] = torch.zeros_like(p, dtype=F.compute_dtype(p.dtype))

    @property
    def sage_strength(self) -> float:
        """The SAGE strength alpha of the first group: 0 = plain base update, 1 = full SAGE."""
        return self.param_groups[0]["sage_strength"]

    def set_sage_strength(self, alpha: float) -> None:
        """Set alpha in every group (the applied multiplier is 1 + alpha * (r - 1)); a scheduler calls this."""
        _check_range("sage_strength", alpha, 0.0)
        for group in self.param_groups:
            group["sage_strength"] = float(alpha)

    def _init_state(self, p: Tensor, sage: bool) -> dict[str, Tensor]:
        state = self.state[p]
        if not state:
            dtype = F.compute_dtype(p.dtype)
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
            state[self._second_moment] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if sage and "exp_avg_sens" not in state:
            state["exp_avg_sens"] = torch.zeros_like(p, dtype=F.compute_dtype(p.dtype))
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stats = self._sage_stats_begin()  # diagnostics hook (diagnostics.py): None unless requested
        for group in self.param_groups:
            params, grads, firsts, seconds, sens, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self._init_state(p, group["sage"])
                params.append(p)
                grads.append(p.grad)
                firsts.append(state["exp_avg"])
                seconds.append(state[self._second_moment])
                steps.append(state["step"])
                if group["sage"]:
                    sens.append(state["exp_avg_sens"])
            if stats is not None and group["sage"]:  # diagnostics: before the kernel overwrites the state
                self._sage_stats_observe(stats, group, params, grads, sens, steps)
            if not params:
                continue
            impl = F.resolve_impl(group["impl"], params)  # auto: fused on CPU, foreach on CUDA
            beta1, beta2 = group["betas"]
            type(self)._functional(
                params,
                grads,
                firsts,
                seconds,
                sens if group["sage"] else None,
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                beta3=group["beta3"],
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                bias_correction=group["bias_correction"],
                strength=group["sage_strength"],
                impl=impl,
            )
        self._sage_stats_finish(stats)
        return loss


class AdamSAGE(_SAGEBase):
    r"""AdamW with SAGE, the sensitivity-guided per-entry learning-rate multiplier (Liang et al., ICLR 2022).

    For every entry of every selected tensor, at step :math:`t` with gradient :math:`g_t` (already unscaled and
    clipped) and learning rate :math:`\gamma_t`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        I_t &= |\theta_t \odot g_t|                                   && \text{sensitivity} \\
        \bar I_t &= \beta_3 \bar I_{t-1} + (1-\beta_3) I_t, \quad \bar I_0 = 0  && \text{smoothed sensitivity} \\
        \hat I_t &= \bar I_t / (1-\beta_3^t) \text{ if bias\_correction else } \bar I_t \\
        U_t &= |I_t - \hat I_t|                                       && \text{local variation} \\
        r_t &= (U_t + \epsilon^2) / (\hat I_t + \epsilon^2)           && \text{multiplier} \\
        \rho_t &= 1 + \alpha (r_t - 1)                                && \text{applied, strength } \alpha \\
        \theta_{t+1} &= \theta_t - \gamma_t \lambda \theta_t
            - \gamma_t \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t} \, \rho_t \, \frac{m_t}{\sqrt{v_t}+\epsilon}

    Weight decay :math:`\lambda` is decoupled (AdamW) and not scaled by the multiplier; :math:`\epsilon` sits where
    fairseq's ``adam`` puts it. Tensors not selected by ``sage_params`` take the same update with :math:`\rho_t = 1`.

    **No frozen entries.** The paper's multiplier is :math:`U_t / (\hat I_t + \epsilon^2)`. An entry that is exactly
    zero has :math:`I = 0` forever, so that multiplier is 0 and the entry never moves; fairseq initialises attention
    output biases and LayerNorm biases to zero, and NMT trains from scratch. Adding :math:`\epsilon^2` to the
    numerator as well makes the multiplier tend to 1 (the plain base step) where the smoothed sensitivity is far below
    :math:`\epsilon^2`: an entry with no sensitivity information takes Adam's step instead of none, and gets SAGE once
    it has moved. Elsewhere the change is below :math:`\epsilon^2 / \hat I_t` (about 1e-8 relative for typical
    fairseq sensitivities with eps=1e-8), and the multiplier keeps its bound ``max(1, beta3 / (1 - beta3))`` without
    bias correction. With bias correction, :math:`r_1 = \epsilon^2/(I_1+\epsilon^2)`: on the first step nonzero entries
    (practically) do not move and zero entries take the base step.

    Args:
        params: tensors, named parameters (``model.named_parameters()``, needed for a ``sage_params`` selection) or
            param-group dicts; a group may set ``sage=False`` to take the plain update.
        lr, betas, eps, weight_decay: as in AdamW (``eps`` also sets the multiplier's ``eps**2``).
        beta3: EMA coefficient of the sensitivity, in [0, 1); the authors used 0.6 to 0.9 (default 0.75).
        bias_correction: divide the smoothed sensitivity by ``1 - beta3**t`` (the Adam moments are always corrected).
        sage_strength: alpha above; 0 gives plain AdamW, 1 full SAGE. ``set_sage_strength`` changes it in place.
        sage_params: ``"all"`` (default), ``"attn_ffn"`` (attention and feed-forward projections, the authors' GLUE
            choice), ``"none"``, or ``"regex:PATTERN"`` searched in parameter names.
        impl: ``"auto"`` (fused on CPU, foreach on CUDA), ``"fused"``, ``"single_tensor"`` or ``"foreach"``.

    State per selected tensor: ``step``, ``exp_avg``, ``exp_avg_sq``, ``exp_avg_sens`` (fp32 for fp16/bf16 tensors).
    """

    _second_moment = "exp_avg_sq"
    _functional = staticmethod(F.adam_sage)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        beta3: float = 0.75,
        bias_correction: bool = True,
        sage_strength: float = 1.0,
        sage_params: str = "all",
        impl: str = "auto",
    ):
        super().__init__(params, lr, betas, eps, weight_decay, beta3, bias_correction, sage_strength, sage_params, impl)


class AdamaxSAGE(_SAGEBase):
    r"""Adamax with SAGE, as in the authors' code (Liang et al., ICLR 2022).

    With the multiplier :math:`\rho_t` of :class:`AdamSAGE` (here ``bias_correction`` defaults to False, so
    :math:`\hat I_t = \bar I_t`):

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        u_t &= \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \quad u_0 = 0 \\
        \theta_{t+1} &= \theta_t - \gamma_t \, \rho_t \left( \frac{m_t}{u_t + \epsilon} + \lambda \theta_t \right)

    No bias correction of :math:`m_t`; weight decay is coupled, inside the scaled update. Arguments as
    :class:`AdamSAGE`. State: ``step``, ``exp_avg``, ``exp_inf``, ``exp_avg_sens``.
    """

    _second_moment = "exp_inf"
    _functional = staticmethod(F.adamax_sage)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        beta3: float = 0.75,
        bias_correction: bool = False,
        sage_strength: float = 1.0,
        sage_params: str = "all",
        impl: str = "auto",
    ):
        super().__init__(params, lr, betas, eps, weight_decay, beta3, bias_correction, sage_strength, sage_params, impl)
