"""SAGE optimizers as plain ``torch.optim.Optimizer`` classes: ``AdamSAGE`` and ``AdamaxSAGE``. No fairseq import."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from . import _plan
from .diagnostics import SAGEStatsMixin
from .options import RANGES, check_options, check_param, check_range, describe_param, plain_numbers
from .saved_state import SavedStateMixin
from .selection import check_matches, selector


def _capturing() -> bool:
    """A CUDA graph is being captured on the current stream (never where CUDA was not even initialised)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


class _SAGEBase(SavedStateMixin, SAGEStatsMixin, torch.optim.Optimizer):
    """Shared machinery: option checks, tensor selection (``sage`` flag per group), state and dispatch."""

    _second_moment: str  # name of the second state tensor ("exp_avg_sq" or "exp_inf")
    _functional: Callable[..., None]
    _converts_torch_adam: bool  # whether load_state_dict converts a torch.optim.Adam/AdamW state

    # capabilities read by fairseq's wrappers: element-wise, so flat and fp16 (upcast) parameters work
    supports_memory_efficient_fp16 = True
    supports_flat_params = True

    # False: the step of the code before launch plans (a list of tensors per call, step counts on the CPU), kept to
    # measure against (sage_toolkit.gpu.steps, sage_toolkit.bench.optimizer) and for the host-work test
    _launch_plans = True

    def __init__(self, params, lr, betas, eps, weight_decay, beta3, bias_correction, sage_strength, sage_params, impl,
                 capturable):  # fmt: skip
        options = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, beta3=beta3, sage_strength=sage_strength)
        check_options({**options, "impl": impl, "capturable": capturable})
        self._selects = selector(sage_params)  # raises ValueError for an unknown preset or a bad regex
        self._sage_params = sage_params
        self._all_names: list[str] = []
        self._warned_no_grad = False
        defaults = dict(
            plain_numbers(options),
            bias_correction=bool(bias_correction),
            sage=True,
            sage_params=sage_params,
            impl=impl,
            capturable=capturable,
        )
        super().__init__(params, defaults)
        if self._selects is not None:
            if not self._all_names:
                raise ValueError(
                    f"sage_params={sage_params!r} was given, but every parameter group sets sage=True/False itself, "
                    "so the selection would choose nothing: drop sage_params, or pass named parameters without sage"
                )
            check_matches(sage_params, self._all_names)
            frozen = [n for g in self.param_groups if g["sage"] for n, p in self._named(g) if not p.requires_grad]
            if frozen and len(frozen) == sum(len(g["params"]) for g in self.param_groups if g["sage"]):
                raise ValueError(
                    f"sage_params={sage_params!r} selects only tensors that do not require a gradient "
                    f"({', '.join(frozen[:4])}{', ...' if len(frozen) > 4 else ''}): SAGE would apply to nothing"
                )

    def name_parameters(self, params: Iterable[Tensor], names: Iterable[str]) -> None:
        """Names for error messages where the tensors came without them (fairseq hands over bare tensors)."""
        self._names_by_id = {id(p): n for p, n in zip(params, names, strict=True)}
        self._plans = None  # the plans hold the names of their error messages

    def _named(self, group: dict[str, Any]) -> list[tuple[str | None, Tensor]]:
        names = group.get("param_names")
        if names is None:
            by_id = getattr(self, "_names_by_id", {})
            names = [by_id.get(id(p)) for p in group["params"]]
        return list(zip(names, group["params"], strict=True))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; with a ``sage_params`` selection, split it into a SAGE part and a plain part by name."""
        check_options({k: v for k, v in {**self.defaults, **param_group}.items()
                       if k in (*RANGES, "betas", "impl", "capturable")})  # fmt: skip
        self._plans = None  # a plan is per group index: rebuilt for every group
        param_group = plain_numbers(param_group)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
            check_param(p, name, f"group {len(self.param_groups)}, index {i}")
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
        for part, flag in ((chosen, True), (rest, False)):
            if part:
                super().add_param_group({**param_group, "params": part, "sage": flag})

    @property
    def sage_strength(self) -> float | Tensor:
        """The SAGE strength alpha of the first group: 0 = plain base update, 1 = full SAGE."""
        return self.param_groups[0]["sage_strength"]

    def set_sage_strength(self, alpha: float | Tensor) -> None:
        """Set alpha in every group (the applied multiplier is 1 + alpha * (r - 1)); a scheduler calls this. A
        one-element tensor is kept as the tensor, as torch keeps a tensor lr (its value is checked here, once)."""
        check_range("sage_strength", alpha, **RANGES["sage_strength"])
        value = alpha if isinstance(alpha, Tensor) else float(alpha)
        for group in self.param_groups:
            group["sage_strength"] = value

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

    def _check_dense_gradients(self, indices: Iterable[int] | None = None) -> None:
        """Before any group moves: a sparse gradient (``nn.Embedding(sparse=True)``) is refused, naming its tensor
        (of the groups at ``indices``, default all)."""
        for g in range(len(self.param_groups)) if indices is None else indices:
            group = self.param_groups[g]
            for i, p in enumerate(group["params"]):
                if p.grad is not None and p.grad.layout != torch.strided:
                    name = self._named(group)[i][0]
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients: "
                        f"{describe_param(name, f'group {g}, index {i}')} has a {p.grad.layout} gradient. Make it "
                        "dense (nn.Embedding(sparse=False)), or give that tensor to an optimizer for sparse gradients"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every tensor with a gradient. The ``triton`` and ``fused`` kernels step through a launch plan
        per group (``_plan``: built at the first step and again only when something it depends on changed; a step
        then reads the gradients and checks that nothing moved); the others take lists of tensors at every step.
        Every check, and every plan that must be built, comes before the first tensor moves."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        capturing = _capturing()
        if capturing:
            self._check_capture()
        if self._launch_plans:
            ready, list_groups = self._prepare_plans(capturing)
        else:
            ready, list_groups = {}, list(range(len(self.param_groups)))
        if list_groups:
            self._check_dense_gradients(list_groups)
        stats = self._sage_stats_begin()  # diagnostics hook (diagnostics.py): None unless requested
        if not self._warned_no_grad:
            self._check_gradients_reach_sage()
        for index, group in enumerate(self.param_groups):
            if index in ready:
                plan, inputs = ready[index]
                plan.step(inputs, group, stats)
            else:
                self._step_lists(group, stats)
        self._sage_stats_finish(stats)
        return loss

    def _check_capture(self) -> None:
        """While a CUDA graph is being captured (torch's rule: only an optimizer made for it may be captured)."""
        if not all(group["capturable"] for group in self.param_groups):
            raise RuntimeError(
                f"{type(self).__name__}.step() is being captured in a CUDA graph, but its param_groups have "
                "capturable=False: construct it with capturable=True (the triton kernel on CUDA tensors)"
            )
        if getattr(self, "_sage_stats_request", None) is not None:
            raise RuntimeError(
                "SAGE statistics (request_sage_stats) read the sampled entries on the host: request them in a step "
                "that is not being captured in a CUDA graph"
            )

    def _prepare_plans(self, capturing: bool) -> tuple[dict[int, tuple[Any, list]], list[int]]:
        """Each group's plan and this step's inputs (``_plan.GroupPlan.inputs``), the plans that are out of date
        rebuilt; and the groups whose impl takes lists instead. Raises before any tensor moves."""
        plans = self.__dict__.get("_plans")
        if plans is None or not plans.state_unchanged(self.state):
            plans = self._plans = _plan.Plans(self.state)
        ready: dict[int, tuple[Any, list]] = {}
        stale = []
        for index, group in enumerate(self.param_groups):
            plan = plans.groups.get(index)
            inputs = plan.inputs(group, capturing) if plan is not None else None
            if inputs is None:
                stale.append(index)
            else:
                ready[index] = (plan, inputs)
        list_groups = []
        if stale:
            if capturing:
                raise RuntimeError(
                    "SAGE capturable=True: the step being captured would build its launch plan (the first step, or "
                    "parameters, state or gradients that moved since the last one): run one step outside the "
                    "capture first, with the parameters and the static gradients that the captured step will use"
                )
            self._check_dense_gradients(stale)
            for index in stale:
                group = self.param_groups[index]
                plan = _plan.GroupPlan.build(self, index, group)
                if plan is None:  # an impl that takes lists of tensors
                    plans.groups.pop(index, None)
                    list_groups.append(index)
                    continue
                plans.groups[index] = plan
                inputs = plan.inputs(group, capturing)
                if inputs is None:  # a plan that does not fit what it was built from: a bug, never a silent step
                    raise RuntimeError(f"SAGE: the launch plan of param group {index} is stale as soon as it is built")
                ready[index] = (plan, inputs)
            plans.remember_state(self.state)
        return ready, list_groups

    def _step_lists(self, group: dict[str, Any], stats: list | None) -> None:
        """One group's update through the functional form: lists of the tensors with a gradient, at every step."""
        if group["capturable"]:
            raise RuntimeError(
                "SAGE capturable=True: this group takes the step of lists (step counts read on the host), which a CUDA "
                "graph cannot capture"
            )
        params, grads, firsts, seconds, sens, steps, names = [], [], [], [], [], [], []
        for name, p in self._named(group):
            if p.grad is None:
                continue
            state = self._init_state(p, group["sage"])
            params.append(p)
            grads.append(p.grad)
            firsts.append(state["exp_avg"])
            seconds.append(state[self._second_moment])
            steps.append(state["step"])
            names.append(name)
            if group["sage"]:
                sens.append(state["exp_avg_sens"])
        if stats is not None and group["sage"]:  # diagnostics: before the kernel overwrites the state
            self._sage_stats_observe(stats, group, params, grads, sens, steps, names)
        if not params:
            return
        impl = F.resolve_impl(group["impl"], params)  # auto: fused on CPU, triton on CUDA
        beta1, beta2 = group["betas"]
        type(self)._functional(
            params,
            grads,
            firsts,
            seconds,
            sens if group["sage"] else None,
            steps,
            lr=float(group["lr"]),  # a tensor lr (as torch's optimizers take) is read at every step
            beta1=beta1,
            beta2=beta2,
            beta3=group["beta3"],
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            bias_correction=group["bias_correction"],
            strength=float(group["sage_strength"]),
            impl=impl,
            param_names=names,
        )

    def _check_gradients_reach_sage(self) -> None:
        """Once, at the first step with gradients: warn when a selection's tensors got none (a pattern that matches
        only unused tensors would otherwise run plain Adam without a word)."""
        sage = [p for g in self.param_groups if g["sage"] for p in g["params"]]
        plain = [p for g in self.param_groups if not g["sage"] for p in g["params"]]
        if not sage or not any(p.grad is not None for p in plain):  # nothing to warn about, or not yet known
            self._warned_no_grad = not sage or any(p.grad is not None for p in sage)
            return
        self._warned_no_grad = True
        if not any(p.grad is not None for p in sage):
            choice = self.param_groups[0]["sage_params"]
            warnings.warn(
                f"SAGE: sage_params={choice!r} selects {len(sage)} tensors, and none of them received a gradient in "
                "the first update (other tensors did): SAGE applies to nothing that trains. Check the selection.",
                RuntimeWarning,
                stacklevel=3,
            )


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

    **No frozen entries.** The paper's multiplier is :math:`U_t / (\hat I_t + \epsilon^2)`, which is 0 forever for an
    entry that is exactly zero (fairseq's zero-initialised biases); with :math:`\epsilon^2` in the numerator too, such
    an entry takes the base step until it has moved. Elsewhere the change is below :math:`\epsilon^2 / \hat I_t`; the
    reasoning and the first step's behaviour: docs/pytorch.md ("The update, and one deliberate change").

    Args:
        params: tensors, named parameters (``model.named_parameters()``, needed for a ``sage_params`` selection) or
            param-group dicts; a group may set ``sage=False`` to take the plain update.
        lr, betas, eps, weight_decay: as in AdamW (``lr`` may be a one-element tensor, as there); ``eps`` > 0 also
            sets the multiplier's ``eps**2``.
        beta3: EMA coefficient of the sensitivity, in [0, 1); the authors used 0.6 to 0.9 (default 0.75).
        bias_correction: divide the smoothed sensitivity by ``1 - beta3**t`` (the Adam moments are always corrected).
        sage_strength: alpha above; 0 gives plain AdamW, 1 full SAGE. ``set_sage_strength`` changes it in place. A
            one-element tensor is kept, as ``lr`` (changing it in place changes the next step).
        sage_params: ``"all"`` (default), ``"attn_ffn"`` (attention and feed-forward projections, the authors' GLUE
            choice), ``"no_embed"`` (every tensor but the embeddings and the output projection), ``"none"``, or
            ``"regex:PATTERN"`` searched in parameter names.
        impl: ``"auto"`` (fused on CPU; triton on CUDA, foreach where Triton cannot run), ``"fused"``,
            ``"single_tensor"``, ``"foreach"`` or ``"triton"`` (one fused Triton kernel on CUDA).
        capturable: as torch's: the step may be captured in a CUDA graph and replayed (with static gradients, as
            torch requires). Needs the triton kernel (``impl`` ``"triton"`` or ``"auto"``, CUDA tensors); refused
            with the others. The triton step never reads a device value on the host either way: step counters, lr
            and strength stay on the device. A Python ``lr`` is captured as it is; a tensor ``lr`` (or strength) on
            the parameters' device is read at every replay, as in torch.

    State per selected tensor: ``step``, ``exp_avg``, ``exp_avg_sq``, ``exp_avg_sens`` (fp32 for fp16/bf16 tensors);
    ``step`` is a float32 0-dim tensor, on the parameter's device once the triton kernel has stepped it.
    ``load_state_dict`` also converts a ``torch.optim.AdamW`` state (docs/optimizer-state.md).
    """

    _second_moment = "exp_avg_sq"
    _functional = staticmethod(F.adam_sage)
    _converts_torch_adam = True

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
        capturable: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, beta3, bias_correction, sage_strength, sage_params, impl,
                         capturable)  # fmt: skip


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
    _converts_torch_adam = False

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
        capturable: bool = False,
    ):
        super().__init__(params, lr, betas, eps, weight_decay, beta3, bias_correction, sage_strength, sage_params, impl,
                         capturable)  # fmt: skip
