"""SAGE optimizers as plain ``torch.optim.Optimizer`` classes: ``AdamSAGE`` and ``AdamaxSAGE``. No fairseq import."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from . import _plan
from .diagnostics import SAGEStatsMixin
from .selection import check_matches, selector


def _capturing() -> bool:
    """A CUDA graph is being captured on the current stream (never where CUDA was not even initialised)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _real(value: Any, tensor_ok: bool = False) -> float | None:
    """The number an option holds: a Python or numpy real (not a bool), or with ``tensor_ok`` a one-element real
    tensor (torch's optimizers take ``lr`` as one); None for anything else."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Tensor) and tensor_ok and value.numel() == 1:
        if not (value.is_complex() or value.dtype == torch.bool):
            return float(value)
    return None


def _check_range(name: str, value: Any, low: float, high: float | None = None, *, above: bool = False,
                 tensor_ok: bool = False, why: str = "") -> None:  # fmt: skip
    """``value`` is a finite number >= ``low`` (> ``low`` with ``above``) and < ``high``."""
    number = _real(value, tensor_ok)
    if number is None:
        raise ValueError(f"{name} must be a number{' or a one-element tensor' if tensor_ok else ''}, got {value!r}")
    ok = math.isfinite(number) and (number > low if above else number >= low)
    if ok and high is not None:
        ok = number < high
    if not ok:
        bound = f"in [{low}, {high})" if high is not None else f"{'>' if above else '>='} {low}"
        raise ValueError(f"{name} must be {bound}, got {value!r}{why}")


def _check_betas(betas: Any, name: str = "betas") -> tuple[float, float]:
    try:
        beta1, beta2 = (float(b) for b in betas)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a pair of floats, got {betas!r}") from None
    _check_range(f"{name}[0]", beta1, 0.0, 1.0)
    _check_range(f"{name}[1]", beta2, 0.0, 1.0)
    return beta1, beta2


# the scalar options every group carries, with their checks (_check_range's keywords); checked at construction, per
# added group and in a loaded state. eps > 0: it keeps both denominators positive; at 0 an entry whose gradient has
# always been 0 (a padding embedding row) or whose sensitivity is 0 (a zero-initialised bias) gets 0/0 = NaN.
_RANGES: dict[str, dict[str, Any]] = {
    "lr": dict(low=0.0, tensor_ok=True),
    "eps": dict(low=0.0, above=True, why=" (eps keeps the denominators positive: at 0, an entry whose gradient or "
                                         "sensitivity is zero gets 0/0 = NaN)"),
    "weight_decay": dict(low=0.0),
    "beta3": dict(low=0.0, high=1.0),
    "sage_strength": dict(low=0.0, tensor_ok=True),
}  # fmt: skip
# the options a tensor may hold (as torch's lr): kept as the tensor, read by the step (changing it in place changes the
# next step); a tensor on the parameters' device is read there by the triton kernel, without a host read
_TENSOR_OPTIONS = ("lr", "sage_strength")
# the impls whose step counts and scalars stay on the device: the ones a CUDA graph can capture
CAPTURABLE_IMPLS = ("auto", "triton")


def check_options(options: dict[str, Any], names: dict[str, str] | None = None) -> None:
    """Validate SAGE options (any subset of the constructor's keywords); errors name ``names[key]`` where given
    (the fairseq wrapper passes its command-line flags, so a user reads ``--sage-beta3``, not ``beta3``)."""
    names = names or {}
    for key, value in options.items():
        name = names.get(key, key)
        if key in _RANGES:
            _check_range(name, value, **_RANGES[key])
        elif key == "betas":
            _check_betas(value, name)
        elif key == "impl" and value not in F.IMPLEMENTATIONS:
            raise ValueError(f"{name} must be one of {', '.join(F.IMPLEMENTATIONS)}, got {value!r}")
        elif key == "capturable" and not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")
    if options.get("capturable") is True and options.get("impl", "auto") not in CAPTURABLE_IMPLS:
        raise ValueError(
            f"{names.get('capturable', 'capturable')}=True needs impl 'triton' or 'auto' (the triton kernel on CUDA "
            f"tensors, whose step never reads a device value on the host); impl={options['impl']!r} reads the step "
            "counts on the host, which a CUDA graph cannot capture"
        )


def _plain_numbers(options: dict[str, Any]) -> dict[str, Any]:
    """The checked scalar options as Python floats (numpy scalars would make a saved state need numpy to load); a
    tensor ``lr`` or strength stays the tensor, as torch's lr (the caller may change it in place)."""
    out = dict(options)
    for key in _RANGES:
        if key in out and not (key in _TENSOR_OPTIONS and isinstance(out[key], Tensor)):
            out[key] = float(out[key])
    if "betas" in out:
        out["betas"] = _check_betas(out["betas"])
    return out


class SelectionChangedError(ValueError):
    """A saved state was made with another choice of SAGE tensors (``sage_params``) than this optimizer's."""


def _describe(name: str | None, where: str) -> str:
    return f"parameter {name!r} ({where})" if name else f"the parameter at {where}"


def _check_param(p: Any, name: str | None, where: str) -> None:
    """Refuse what SAGE cannot update before any state exists (a later failure inside step() would leave the state
    half-updated)."""
    if not isinstance(p, Tensor):
        raise TypeError(f"SAGE optimizes tensors; {where} is a {type(p).__name__}")
    if p.is_complex():
        raise ValueError(
            f"SAGE does not support complex parameters: {_describe(name, where)} is {p.dtype}. The sensitivity "
            "|theta * grad| is defined per real entry; optimize torch.view_as_real(p) as a real parameter instead"
        )
    if not p.is_floating_point():
        raise ValueError(f"SAGE optimizes floating-point tensors: {_describe(name, where)} is {p.dtype}")


# ---------------------------------------------------------------- saved states of other optimizers
# Which convert, and into what: docs/optimizer-state.md. A SAGE state's groups carry ``beta3``; a group of
# torch.optim.Adam/AdamW (and fairseq's adam) carries ``amsgrad``.
STATE_DOC = "docs/optimizer-state.md"
_OPTIONS_NEEDED = ("lr", "betas", "eps", "weight_decay")  # every group of a state this package loads has them

# torch's options that choose how torch computes the update, not what it computes: dropped on conversion. SAGE runs
# its own kernel (``impl``), has its own ``capturable`` (the constructor's, as ``impl``) and steps outside autograd
# (what ``differentiable`` records); the trajectory of the converted state is the same either way.
_TORCH_HOW_OPTIONS = ("foreach", "fused", "capturable", "differentiable")

# torch's options that change what is optimized: (option, the value SAGE implements, why another is refused)
_TORCH_WHAT_OPTIONS = (
    ("amsgrad", False, "SAGE has no AMSGrad variant: its max_exp_avg_sq would be dropped and the steps would change"),
    ("maximize", False, "SAGE minimizes: to maximize, negate the loss"),
)


def _convert_torch_adam_group(owner: str, g: int, saved: dict[str, Any]) -> None:
    """A torch.optim.Adam/AdamW group as an AdamSAGE group, in place (``saved`` is the loader's copy); ValueError
    naming the option where the saved optimizer computed something AdamSAGE does not."""
    where = f"{owner}.load_state_dict: the saved state (a torch.optim.Adam/AdamW one, param_groups[{g}])"
    for key, implemented, why in _TORCH_WHAT_OPTIONS:
        if saved.get(key, implemented) != implemented:
            raise ValueError(f"{where} was made with {key}={saved[key]!r}; {why}. {F.START_AFRESH}")
    decoupled = saved.get("decoupled_weight_decay")
    decay = saved.get("weight_decay", 0.0)
    if decoupled is not True and _real(decay, tensor_ok=True) != 0.0:
        if decoupled is None:
            raise ValueError(
                f"{where} has weight_decay={decay!r} and does not say whether it is decoupled (AdamW's, as "
                "AdamSAGE's) or an L2 term added to the gradient (Adam's): torch releases before "
                "decoupled_weight_decay existed do not record it. If the state is torch.optim.AdamW's (or fairseq's "
                f"adam), set decoupled_weight_decay=True in each of its param_groups and load it again; else "
                f"{F.START_AFRESH}"
            )
        raise ValueError(
            f"{where} has weight_decay={decay!r} with decoupled_weight_decay=False (torch.optim.Adam: an L2 term "
            "added to the gradient); AdamSAGE's weight decay is decoupled (AdamW's), so the run would optimize "
            f"another objective. Convert a torch.optim.AdamW state, or {F.START_AFRESH}"
        )
    for key in (*(k for k, _, _ in _TORCH_WHAT_OPTIONS), "decoupled_weight_decay", *_TORCH_HOW_OPTIONS):
        saved.pop(key, None)


class _SAGEBase(SAGEStatsMixin, torch.optim.Optimizer):
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
            _plain_numbers(options),
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
                       if k in (*_RANGES, "betas", "impl", "capturable")})  # fmt: skip
        self._plans = None  # a plan is per group index: rebuilt for every group
        param_group = _plain_numbers(param_group)
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, item in enumerate(params):
            name, p = item if isinstance(item, tuple) and len(item) == 2 else (None, item)
            _check_param(p, name, f"group {len(self.param_groups)}, index {i}")
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

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, groups), plus what a copy needs of the rest: the once-only warning's flag and the
        tensors' names from ``name_parameters``, by position (a copy's tensors are new objects)."""
        state = super().__getstate__()
        state["_warned_no_grad"] = self._warned_no_grad
        by_id = getattr(self, "_names_by_id", None)
        if by_id:
            state["_names_by_position"] = [[by_id.get(id(p)) for p in g["params"]] for g in self.param_groups]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling and copying (``state`` from ``__getstate__``), and torch's load_state_dict (state and groups
        only): what ``__init__`` derived from the options is rebuilt where missing, never overwritten."""
        names = state.pop("_names_by_position", None)
        super().__setstate__(state)
        for group in self.param_groups:  # states saved before these options existed
            group.setdefault("sage_strength", 1.0)
            group.setdefault("sage", True)
            group.setdefault("impl", "auto")
            group.setdefault("capturable", False)
        self._plans = None  # copies, pickles and loaded states build their own (the tensors are others)
        if "_selects" not in self.__dict__:
            self._sage_params = self.defaults.setdefault("sage_params", "all")
            self._selects = selector(self._sage_params)  # a function: pickles do not carry it
            self._all_names = [n for g in self.param_groups for n in g.get("param_names", ())]
        self.__dict__.setdefault("_warned_no_grad", False)
        if names is not None:
            self._names_by_id = {
                id(p): n
                for group, group_names in zip(self.param_groups, names, strict=True)
                for p, n in zip(group["params"], group_names, strict=True)
                if n is not None
            }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load (the saved options are restored), after checks that nothing in the saved state can misfit:
        the choice of SAGE tensors must be the one the state was saved with (``SelectionChangedError``), every saved
        tensor must have its parameter's shape, and a state of another optimizer loads only where it converts
        (``STATE_DOC``: a torch.optim.Adam/AdamW state into ``AdamSAGE``; ``ValueError`` naming the key or option
        otherwise). Nothing is changed when a check fails, and the caller's dict is not modified (as in torch, its
        tensors become the state where their dtype and device fit). One exception to torch: ``impl`` stays this
        optimizer's (it names this machine's kernel, not part of the training). Loaded state tensors are in the
        compute dtype (torch would cast them to fp16/bf16 parameters, and fp16 flushes the second moment to zero),
        step counters are float32 0-dim tensors on the CPU (a triton step moves them to the parameters' device, as
        torch's fused and capturable optimizers keep them). ``capturable`` also stays this optimizer's."""
        saved_groups = [dict(g) for g in state_dict.get("param_groups", [])]
        saved_state = state_dict.get("state", {})
        self._check_selection(saved_groups)
        self._convert_saved_groups(saved_groups)
        self._check_saved_state(saved_groups, saved_state)
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for key in ("sage_strength", "sage", "bias_correction", "beta3", "sage_params"):
                saved.setdefault(key, group[key])
            saved["impl"], saved["capturable"] = group["impl"], group["capturable"]
        super().load_state_dict({**state_dict, "param_groups": saved_groups})
        for saved, group in zip(saved_groups, self.param_groups, strict=True):
            for saved_id, p in zip(saved["params"], group["params"], strict=True):
                state = self.state.get(p)
                if not state:
                    continue
                dtype = F.compute_dtype(p.dtype)
                for key in ("exp_avg", self._second_moment, "exp_avg_sens"):
                    if key in state:  # from the saved tensor, not from torch's cast to the parameter's dtype
                        state[key] = saved_state[saved_id][key].to(device=p.device, dtype=dtype)
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)  # an int in older states
                if group["sage"] and "exp_avg_sens" not in state:  # from a plain-Adam state: start the EMA
                    state["exp_avg_sens"] = torch.zeros_like(p, dtype=dtype)

    def _convert_saved_groups(self, saved_groups: list[dict[str, Any]]) -> None:
        """Each saved group as a group of this optimizer, in place (the loader's copies): a SAGE group as it is, a
        torch.optim.Adam/AdamW one converted where this class converts it; anything else is refused. Then the
        options every group needs are there and in range."""
        owner = type(self).__name__
        for g, saved in enumerate(saved_groups):
            if "beta3" not in saved:
                if not (self._converts_torch_adam and "amsgrad" in saved):
                    takes = "only torch.optim.Adam/AdamW states" if self._converts_torch_adam else "no other one"
                    options = ", ".join(sorted(str(k) for k in saved if k != "params"))
                    raise ValueError(
                        f"{owner}.load_state_dict: the saved state is another optimizer's, not a SAGE state (its "
                        f"param_groups[{g}] has no beta3; its options: {options}). {owner} converts {takes} "
                        f"({STATE_DOC}): {F.START_AFRESH}"
                    )
                _convert_torch_adam_group(owner, g, saved)
            where = f"{owner}.load_state_dict: the saved param_groups[{g}]"
            missing = [key for key in _OPTIONS_NEEDED if key not in saved]
            if missing:
                raise ValueError(f"{where} has no {', '.join(missing)}: not a state this optimizer loads ({STATE_DOC})")
            try:
                check_options({k: v for k, v in saved.items() if k in (*_RANGES, "betas")})
            except ValueError as exc:
                raise ValueError(f"{where} does not fit: {exc}. {F.START_AFRESH}") from None

    def _check_saved_state(self, saved_groups: list[dict[str, Any]], saved_state: dict[Any, Any]) -> None:
        """Every saved per-tensor state holds this optimizer's keys (a state saved by another optimizer lacks or adds
        some), a numeric step, and tensors of its parameter's shape."""
        owner = type(self).__name__
        needed = {"step", "exp_avg", self._second_moment}
        kept = sorted(needed | {"exp_avg_sens"})
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            for i, (saved_id, (name, p)) in enumerate(zip(saved["params"], self._named(group), strict=True)):
                entry = saved_state.get(saved_id, {})
                if not entry:
                    continue
                where = f"{owner}.load_state_dict: the saved state of {_describe(name, f'group {g}, index {i}')}"
                unknown = sorted(set(map(str, entry)) - set(kept))
                missing = sorted(needed - set(entry))
                if unknown or missing:
                    found = [f"has {', '.join(unknown)}"] if unknown else []
                    found += [f"lacks {', '.join(missing)}"] if missing else []
                    raise ValueError(
                        f"{where} {' and '.join(found)}: it was saved by another optimizer ({owner} keeps "
                        f"{', '.join(kept)} per tensor; {STATE_DOC}). {F.START_AFRESH}"
                    )
                for key, value in entry.items():
                    if key == "step" and _real(value, tensor_ok=True) is None:
                        raise ValueError(f"{where}: its step is {value!r}, not a number. {F.RESET_REMEDY}")
                    if not isinstance(value, Tensor) or key == "step":
                        continue
                    if value.shape != p.shape:
                        raise ValueError(
                            f"{where} does not fit: its {key} has shape {tuple(value.shape)}, the parameter needs "
                            f"shape {tuple(p.shape)}. The state was saved for another model or another parameter "
                            f"order: {F.RESET_REMEDY}"
                        )

    def _check_selection(self, saved_groups: list[dict[str, Any]]) -> None:
        groups = self.param_groups
        saved_choice = [g.get("sage_params") for g in saved_groups]
        mine = [g["sage_params"] for g in groups]
        layout = [(len(g["params"]), g["sage"]) for g in groups]
        saved_layout = [(len(g["params"]), g.get("sage")) for g in saved_groups]  # no "sage": a torch Adam state
        fits = len(saved_layout) == len(layout) and all(
            n == m and flag in (None, want) and choice in (None, current)
            for (n, flag), (m, want), choice, current in zip(saved_layout, layout, saved_choice, mine, strict=True)
        )
        if not fits:
            choice = next((c for c in saved_choice if c is not None), None)
            was = f"sage_params={choice!r}" if choice is not None else "another selection or model"
            raise SelectionChangedError(
                f"the saved optimizer state was made with {was}: groups (tensors, SAGE) {saved_layout}; this optimizer "
                f"has sage_params={mine[0]!r}: {layout}. A changed selection cannot be resumed: keep the selection "
                f"(to stop SAGE mid-run, keep it and set sage_strength 0), or {F.START_AFRESH}"
            )

    @property
    def sage_strength(self) -> float | Tensor:
        """The SAGE strength alpha of the first group: 0 = plain base update, 1 = full SAGE."""
        return self.param_groups[0]["sage_strength"]

    def set_sage_strength(self, alpha: float | Tensor) -> None:
        """Set alpha in every group (the applied multiplier is 1 + alpha * (r - 1)); a scheduler calls this. A
        one-element tensor is kept as the tensor, as torch keeps a tensor lr (its value is checked here, once)."""
        _check_range("sage_strength", alpha, **_RANGES["sage_strength"])
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
                        f"{_describe(name, f'group {g}, index {i}')} has a {p.grad.layout} gradient. Make it dense "
                        "(nn.Embedding(sparse=False)), or give that tensor to an optimizer for sparse gradients"
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
