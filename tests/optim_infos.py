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

# ---------------------------------------------------------------- the table

IMPLS = ("single_tensor", "foreach", "fused", "auto")  # auto: fused, or its fallback where it cannot be built

_COMMON = dict(impls=IMPLS, optim_inputs=OPTIM_INPUTS, error_inputs=ERROR_INPUTS, list_error_inputs=LIST_ERROR_INPUTS)

OPTIMIZERS = (
    OptimizerInfo(AdamSAGE, ReferenceAdamSAGE, F.adam_sage, "exp_avg_sq", "adam_sage", **_COMMON),
    OptimizerInfo(AdamaxSAGE, ReferenceAdamaxSAGE, F.adamax_sage, "exp_inf", "adamax_sage", **_COMMON),
)
ADAM = OPTIMIZERS[0]

# ---------------------------------------------------------------- pytest parameters over the table

_NO_FUSED = pytest.mark.skipif(not _fused_cpu.available(), reason=f"no fused kernel here: {_fused_cpu.error()}")


def available_impls(info: OptimizerInfo) -> list[str]:
    """The impls that run here (``fused`` only where its kernel can be built)."""
    return [i for i in info.impls if i != "fused" or _fused_cpu.available()]


def cases(*, dtypes: tuple[torch.dtype, ...] | None = None, errors: str | None = None, impls: str | None = None):
    """``pytest.param`` tuples over ``OPTIMIZERS``: the ``OptimizerInfo``, then, in this order,

    - with ``dtypes``: the option set and the dtype, for every option set that runs in one of these dtypes;
    - with ``errors``: the ``ErrorInput`` (``"construction"``: all of them; ``"group"``: the options a group may
      carry) or the ``ListErrorInput`` (``"lists"``);
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
        if impls is not None:
            names = [i for i in info.impls if impls == "all" or i != "auto"]
            rows = [
                (values + (impl,), ids + [impl], marks + ((_NO_FUSED,) if impl == "fused" else ()))
                for values, ids, marks in rows
                for impl in names
            ]
        out += [pytest.param(*values, id="-".join(ids), marks=marks) for values, ids, marks in rows]
    return out
