"""The one table of optimizers that drives the optimizer tests, in the way of torch's ``OptimizerInfo``
(torch/testing/_internal/common_optimizers.py).

Each ``OptimizerInfo`` holds an optimizer with its implementations (``impls``), its option sets (``optim_inputs``,
each with the parameter dtypes it runs in), its float64 line-by-line reference, its functional form, its fairseq
name, and the errors its bad inputs raise (``error_inputs`` for options, ``list_error_inputs`` for the functional
form's tensor lists). The reference-equality, property, state-dict and error tests parametrize over ``OPTIMIZERS``
through ``cases`` instead of keeping tables of their own: a new optimizer, impl or option set is one entry here, and
every such test then covers it.

Plain PyTorch only (no fairseq import): the optimizer tests run where only torch is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from fairseq_plugins.optim import AdamaxSAGE, AdamSAGE, ReferenceAdamaxSAGE, ReferenceAdamSAGE, _fused_cpu
from fairseq_plugins.optim import _functional as F

LOW_PRECISION = (torch.float16, torch.bfloat16)
# an eps that changes no float64 sum with sqrt(v) of the tests' gradients: where eps sits (torch's AdamW adds it after
# the bias correction, SAGE before) then does not matter, and SAGE's plain update is AdamW's
NEGLIGIBLE_EPS = 1e-30


@dataclass(frozen=True)
class OptimizerInput:
    """One option set: constructor keywords, the indices of the test's tensors that go into a ``sage=False`` group
    (the plain update beside SAGE), and the parameter dtypes it runs in: float64 against the reference, float32 where
    the impls must agree with each other, fp16/bf16 against the reference with fp32 state."""

    desc: str
    kwargs: dict[str, Any]
    unselected: tuple[int, ...] = ()
    dtypes: tuple[torch.dtype, ...] = (torch.float64,)

    def groups(self, params: list[Tensor]) -> list[dict[str, Any]]:
        """``params`` as param groups: the selected ones, then (if any) the unselected ones with ``sage=False``."""
        chosen = [p for i, p in enumerate(params) if i not in self.unselected]
        rest = [p for i, p in enumerate(params) if i in self.unselected]
        return [{"params": chosen}] + ([{"params": rest, "sage": False}] if rest else [])


@dataclass(frozen=True)
class ErrorInput:
    """Constructor keywords that raise ``error_type`` with a message that starts with the option's name (``option``)
    and shows the bad value (``shown``); ``per_group``: an option a param group may carry, so ``add_param_group``
    refuses it too (and adds nothing)."""

    kwargs: dict[str, Any]
    option: str
    shown: str
    error_type: type[Exception] = ValueError
    per_group: bool = True

    @property
    def desc(self) -> str:
        return f"{self.option}={self.shown}"


@dataclass(frozen=True)
class ListErrorInput:
    """Tensor lists for the functional form that raise ``ValueError`` naming SAGE before any tensor or step count
    moves. ``make(param, grad, step)`` returns the six lists (params, grads, exp_avgs, second moments, exp_avg_sens,
    steps) for a 16-entry parameter."""

    desc: str
    make: Callable[[Tensor, Tensor, Tensor], tuple]


@dataclass(frozen=True)
class SavedState:
    """A state saved by some optimizer: ``make(params)`` trains copies of ``params`` one step and returns the
    optimizer's ``state_dict()``. ``refused``: None where ``load_state_dict`` converts it (docs/optimizer-state.md),
    else a pattern of the error, which names the key or option (every refusal also names the remedy)."""

    desc: str
    make: Callable[[list[Tensor]], dict[str, Any]]
    refused: str | None = None


@dataclass(frozen=True)
class OptimizerInfo:
    optim_cls: type[torch.optim.Optimizer]
    reference_cls: type[torch.optim.Optimizer]
    functional: Callable[..., None]
    second_moment: str  # the name of the second state tensor
    fairseq_name: str  # --optimizer NAME
    impls: tuple[str, ...]
    optim_inputs: tuple[OptimizerInput, ...]
    error_inputs: tuple[ErrorInput, ...]
    list_error_inputs: tuple[ListErrorInput, ...]
    saved_states: tuple[SavedState, ...] = ()

    @property
    def name(self) -> str:
        return self.optim_cls.__name__

    @property
    def state_keys(self) -> tuple[str, str, str]:
        """The state tensors of a SAGE tensor besides ``step``."""
        return ("exp_avg", self.second_moment, "exp_avg_sens")


# ---------------------------------------------------------------- option sets

WITH_DECAY = OptimizerInput(
    "decay-bias-correction",
    dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.1, beta3=0.8, bias_correction=True),
    dtypes=(torch.float64, torch.float32),
)
LOW_PRECISION_INPUT = OptimizerInput(
    "eps-1e-6-fp32-state",  # eps**2 = 1e-12 underflows in fp16: the state must be fp32
    dict(WITH_DECAY.kwargs, eps=1e-6),
    dtypes=(torch.float64, *LOW_PRECISION),
)
# the fused kernel's own tests (several threads and chunks, mixed dtypes in one group)
FUSED_INPUT = OptimizerInput(
    "strength-0.7-bias-correction",
    dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.05, beta3=0.8, sage_strength=0.7, bias_correction=True),
)
FUSED_INPUT_NO_BIAS_CORRECTION = OptimizerInput(
    "strength-0.7-no-bias-correction", dict(FUSED_INPUT.kwargs, bias_correction=False)
)

OPTIM_INPUTS = (
    WITH_DECAY,
    OptimizerInput(
        "low-betas-no-decay-no-bias-correction",
        dict(lr=3e-2, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.0, beta3=0.6, bias_correction=False),
    ),
    OptimizerInput(
        "eps-1e-8-strength-0.3",
        dict(
            lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, beta3=0.9, bias_correction=True, sage_strength=0.3
        ),
    ),
    LOW_PRECISION_INPUT,
    FUSED_INPUT,
    FUSED_INPUT_NO_BIAS_CORRECTION,
    OptimizerInput("strength-0", dict(WITH_DECAY.kwargs, sage_strength=0.0)),
    OptimizerInput("beta3-0.3-strength-2", dict(WITH_DECAY.kwargs, beta3=0.3, sage_strength=2.0, weight_decay=0.0)),
    OptimizerInput("unselected-tensors", dict(WITH_DECAY.kwargs), unselected=(1, 3)),
)

# ---------------------------------------------------------------- errors

ERROR_INPUTS = (
    ErrorInput(dict(betas=(1.0, 0.999)), "betas[0]", "1.0"),
    ErrorInput(dict(betas=(0.9, -0.1)), "betas[1]", "-0.1"),
    ErrorInput(dict(betas=(0.9,)), "betas", "(0.9,)"),
    ErrorInput(dict(beta3=1.0), "beta3", "1.0"),
    ErrorInput(dict(beta3=-0.5), "beta3", "-0.5"),
    ErrorInput(dict(eps=-1e-8), "eps", "-1e-08"),
    ErrorInput(dict(eps=-1.0), "eps", "-1.0"),
    ErrorInput(dict(eps=0.0), "eps", "0.0"),  # the multiplier would be 0/0 where the sensitivity is zero
    ErrorInput(dict(lr=torch.tensor([1e-3, 1e-3])), "lr", "tensor([0.0010, 0.0010])"),  # one element, as torch
    ErrorInput(dict(lr=True), "lr", "True"),
    ErrorInput(dict(lr=-1.0), "lr", "-1.0"),
    ErrorInput(dict(lr=float("nan")), "lr", "nan"),
    ErrorInput(dict(weight_decay=-0.1), "weight_decay", "-0.1"),
    ErrorInput(dict(sage_strength=-1.0), "sage_strength", "-1.0"),
    ErrorInput(dict(sage_strength=-0.5), "sage_strength", "-0.5"),
    ErrorInput(dict(sage_params="attention_only"), "sage_params", "attention_only", per_group=False),
    ErrorInput(dict(sage_params="regex:fc[12"), "sage_params", "fc[12", per_group=False),
    ErrorInput(dict(sage_params="regex:nothing_like_this"), "sage_params", "nothing_like_this", per_group=False),
    ErrorInput(dict(impl="cuda_magic"), "impl", "cuda_magic"),
    ErrorInput(dict(impl="gpu"), "impl", "gpu"),
)


def _zeros(n: int, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    return [torch.zeros(n, dtype=dtype)]


LIST_ERROR_INPUTS = (
    ListErrorInput("a short state", lambda p, g, s: ([p], [g], [torch.zeros(4)], _zeros(16), _zeros(16), [s])),
    ListErrorInput("a long state", lambda p, g, s: ([p], [g], _zeros(16), _zeros(16), _zeros(64), [s])),
    ListErrorInput("a missing list entry", lambda p, g, s: ([p], [g], _zeros(16), [], _zeros(16), [s])),
    ListErrorInput("a state in fp16", lambda p, g, s: ([p], [g], _zeros(16, torch.half), _zeros(16), None, [s])),
    ListErrorInput(
        "a gradient of another shape", lambda p, g, s: ([p], [torch.ones(4, 4)], _zeros(16), _zeros(16), None, [s])
    ),
    ListErrorInput(
        "a state on another device",
        lambda p, g, s: ([p], [g], _zeros(16), [torch.zeros(16, device="meta")], _zeros(16), [s]),
    ),
    ListErrorInput("a step counter of 2 entries", lambda p, g, s: ([p], [g], _zeros(16), _zeros(16), None, _zeros(2))),
    ListErrorInput(
        "a sensitivity state in fp64 for an fp32 parameter",
        lambda p, g, s: ([p], [g], _zeros(16), _zeros(16), _zeros(16, torch.float64), [s]),
    ),
)

# ---------------------------------------------------------------- saved states of other optimizers


def _trained(cls: type[torch.optim.Optimizer], **kwargs: Any) -> Callable[[list[Tensor]], dict[str, Any]]:
    """A ``SavedState.make``: ``cls`` on copies of the parameters, one step, its state_dict."""

    def make(params: list[Tensor]) -> dict[str, Any]:
        copies = [p.detach().clone() for p in params]
        opt = cls(copies, **kwargs)
        for i, p in enumerate(copies):
            p.grad = torch.full_like(p, 0.1 * (i + 1))
        opt.step()
        return opt.state_dict()

    return make


def _edited(make: Callable[[list[Tensor]], dict[str, Any]], **group_options: Any):
    """``make``'s state with options set in every group (``None``: removed), and int steps where ``_int_steps``
    (torch before 1.12 and fairseq's adam saved them so)."""
    int_steps = group_options.pop("_int_steps", False)

    def edited(params: list[Tensor]) -> dict[str, Any]:
        state = make(params)
        for group in state["param_groups"]:
            for key, value in group_options.items():
                if value is None:
                    del group[key]
                else:
                    group[key] = value
        if int_steps:
            for entry in state["state"].values():
                entry["step"] = int(entry["step"])
        return state

    return edited


_ADAMW = _trained(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
_ANOTHER_OPTIMIZER = r"another optimizer's, not a SAGE state .*no beta3"
_WD = dict(lr=1e-2, weight_decay=0.1)
SAVED_STATES = {
    AdamSAGE: (
        SavedState("AdamSAGE", _trained(AdamSAGE, **_WD)),
        SavedState("torch-AdamW", _ADAMW),
        SavedState("torch-Adam-no-decay", _trained(torch.optim.Adam, lr=1e-2)),
        SavedState("torch-AdamW-foreach", _trained(torch.optim.AdamW, foreach=True, **_WD)),
        SavedState("torch-AdamW-of-a-GPU", _edited(_ADAMW, fused=True, capturable=True, differentiable=True)),
        SavedState(
            "torch-1.11-Adam",
            _edited(_trained(torch.optim.Adam, lr=1e-2), decoupled_weight_decay=None, _int_steps=True),
        ),
        SavedState(
            "old-torch-AdamW-decay",
            _edited(_ADAMW, decoupled_weight_decay=None),
            r"weight_decay=0.1 and does not say whether it is decoupled.*decoupled_weight_decay=True",
        ),
        SavedState(
            "torch-Adam-decay",
            _trained(torch.optim.Adam, **_WD),
            r"weight_decay=0.1 with decoupled_weight_decay=False \(torch.optim.Adam: an L2 term",
        ),
        SavedState("torch-AdamW-amsgrad", _trained(torch.optim.AdamW, amsgrad=True), r"amsgrad=True.*no AMSGrad"),
        SavedState("torch-AdamW-maximize", _trained(torch.optim.AdamW, maximize=True), r"maximize=True.*negate"),
        SavedState("torch-AdamW-eps-0", _trained(torch.optim.AdamW, eps=0.0), r"param_groups\[0\].*eps must be > 0"),
        SavedState("torch-Adamax", _trained(torch.optim.Adamax), _ANOTHER_OPTIMIZER),
        SavedState("torch-SGD", _trained(torch.optim.SGD, lr=0.1, momentum=0.9), _ANOTHER_OPTIMIZER),
        SavedState("AdamaxSAGE", _trained(AdamaxSAGE), r"has exp_inf and lacks exp_avg_sq: it was saved by another"),
    ),
    AdamaxSAGE: (
        SavedState("AdamaxSAGE", _trained(AdamaxSAGE, **_WD)),
        SavedState("AdamSAGE", _trained(AdamSAGE), r"has exp_avg_sq and lacks exp_inf: it was saved by another"),
        SavedState("torch-AdamW", _ADAMW, _ANOTHER_OPTIMIZER + r".*AdamaxSAGE converts no other one"),
        SavedState("torch-Adamax", _trained(torch.optim.Adamax), _ANOTHER_OPTIMIZER),
        SavedState("AdamaxSAGE-eps-0", _edited(_trained(AdamaxSAGE), eps=0.0), r"eps must be > 0"),
    ),
}

# ---------------------------------------------------------------- the table

IMPLS = ("single_tensor", "foreach", "fused", "auto")  # auto: fused, or its fallback where it cannot be built

_COMMON = dict(impls=IMPLS, optim_inputs=OPTIM_INPUTS, error_inputs=ERROR_INPUTS, list_error_inputs=LIST_ERROR_INPUTS)

OPTIMIZERS = (
    OptimizerInfo(AdamSAGE, ReferenceAdamSAGE, F.adam_sage, "exp_avg_sq", "adam_sage", **_COMMON,
                  saved_states=SAVED_STATES[AdamSAGE]),
    OptimizerInfo(AdamaxSAGE, ReferenceAdamaxSAGE, F.adamax_sage, "exp_inf", "adamax_sage", **_COMMON,
                  saved_states=SAVED_STATES[AdamaxSAGE]),
)  # fmt: skip
ADAM = OPTIMIZERS[0]

# ---------------------------------------------------------------- pytest parameters over the table

_NO_FUSED = pytest.mark.skipif(not _fused_cpu.available(), reason=f"no fused kernel here: {_fused_cpu.error()}")


def available_impls(info: OptimizerInfo) -> list[str]:
    """The impls that run here (``fused`` only where its kernel can be built)."""
    return [i for i in info.impls if i != "fused" or _fused_cpu.available()]


def cases(
    *,
    dtypes: tuple[torch.dtype, ...] | None = None,
    errors: str | None = None,
    saved: str | None = None,
    impls: str | None = None,
):
    """``pytest.param`` tuples over ``OPTIMIZERS``: the ``OptimizerInfo``, then, in this order,

    - with ``dtypes``: the option set and the dtype, for every option set that runs in one of these dtypes;
    - with ``errors``: the ``ErrorInput`` (``"construction"``: all of them; ``"group"``: the options a group may
      carry) or the ``ListErrorInput`` (``"lists"``);
    - with ``saved``: the ``SavedState``, ``"converted"`` (those that load) or ``"refused"``;
    - with ``impls``: the impl, ``"all"`` of them or ``"kernels"`` (without ``auto``); ``fused`` is skipped where its
      kernel cannot be built.
    """
    out = []
    for info in OPTIMIZERS:
        rows: list[tuple[tuple, list[str], tuple]] = [((info,), [info.name], ())]
        if dtypes is not None:
            rows = [
                (values + (opt_input, dtype), ids + [opt_input.desc, str(dtype).removeprefix("torch.")], marks)
                for values, ids, marks in rows
                for opt_input in info.optim_inputs
                for dtype in dtypes
                if dtype in opt_input.dtypes
            ]
        if errors is not None:
            items = {
                "construction": info.error_inputs,
                "group": tuple(e for e in info.error_inputs if e.per_group),
                "lists": info.list_error_inputs,
            }[errors]
            rows = [(values + (e,), ids + [e.desc], marks) for values, ids, marks in rows for e in items]
        if saved is not None:
            states = [x for x in info.saved_states if (x.refused is None) == (saved == "converted")]
            rows = [(values + (x,), ids + [x.desc], marks) for values, ids, marks in rows for x in states]
        if impls is not None:
            names = [i for i in info.impls if impls == "all" or i != "auto"]
            rows = [
                (values + (impl,), ids + [impl], marks + ((_NO_FUSED,) if impl == "fused" else ()))
                for values, ids, marks in rows
                for impl in names
            ]
        out += [pytest.param(*values, id="-".join(ids), marks=marks) for values, ids, marks in rows]
    return out
