"""Launch plans: the host side of the fused steps (``triton``; ``fused`` on the CPU) without per-tensor torch work.

A plan is built per param group at its first step, and again only when something it depends on has changed. It
holds, per launch (a ``Bucket``: the group's tensors of one device, parameter dtype and gradient dtype), what does not
change between steps: the kernel's tables (device-resident for triton: addresses, chunks, options; C arrays for the
CPU kernel), and the step counters, one float32 buffer whose 0-dim views are the tensors' ``state["step"]`` (torch's
fused/capturable convention). A step then reads each gradient's address and checks, in C-level loops over the lists
(``map`` over torch's methods; no Python call per tensor), that nothing the tables point to has moved:

- the group's parameter list (the same tensors), its ``impl``, ``sage`` and ``capturable`` options;
- the gradients: present where they were (one that became None, or a new one, rebuilds), of the parameter's shape,
  dtype and device, in the kernel's layout (a gradient of another layout is copied into it for this step);
- the parameters' and the state tensors' addresses (``model.to(...)``, ``p.data = ...``, a state tensor replaced or
  moved), and the optimizer's state dicts themselves (replaced, added or removed entries).

Anything else that replaces them goes through the optimizer, which drops its plans: ``load_state_dict``,
``add_param_group``, ``name_parameters``, copies and pickles (``__setstate__``). A stale table never reaches a kernel:
the checks of every group run before the first tensor moves, and a plan that is out of date is rebuilt (with the
full checks of the list path, whose errors name the tensor) before it is used.

Per step a bucket costs one ``add_`` of its counters, the options that changed (a ``fill_``, or a ``copy_`` from a
tensor lr or strength), an upload of the gradients' addresses where they moved, and its launch.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter, is_, itemgetter
from typing import Any

import torch
from torch import Tensor

from . import _functional as F
from . import _fused_cpu, _fused_triton
from ._torch_kernels import adam_single_tensor, adamax_single_tensor

_GRAD_META = attrgetter("shape", "dtype", "device")


class Plans:
    """One optimizer's plans, by param group index, and the state dicts they were built with."""

    def __init__(self, state: dict[Tensor, dict[str, Any]]):
        self.groups: dict[int, GroupPlan] = {}
        self.remember_state(state)

    def remember_state(self, state: dict[Tensor, dict[str, Any]]) -> None:
        self.state = state
        self.state_values = list(state.values())

    def state_unchanged(self, state: dict[Tensor, dict[str, Any]]) -> bool:
        """The optimizer's state is the same dict holding the same per-tensor dicts (none replaced, added or
        removed; what each holds is a bucket's check)."""
        if state is not self.state:
            return False
        values = list(state.values())
        return len(values) == len(self.state_values) and all(map(is_, values, self.state_values))


def contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the entries fill ``numel`` consecutive elements from the first one, in some order
    of the dimensions (an element-wise kernel may walk them linearly, as long as all its tensors share the order)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda ss: ss[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def _counters(steps: list[Tensor], device: torch.device) -> Tensor:
    """One float32 buffer on ``device`` with the step counts, built without a host-device synchronisation (counts on
    the CPU, as a state saved by the list path or the CPU impls holds them, travel in one asynchronous copy)."""
    if all(s.device.type == "cpu" for s in steps):
        host = torch.stack([s.reshape(()).to(torch.float32) for s in steps]) if steps else torch.zeros(0)
        return _fused_triton._to_device(host, device)
    return torch.stack([s.to(device=device, dtype=torch.float32).reshape(()) for s in steps])


@dataclass
class Members:
    """The tensors of one bucket, aligned; ``steps`` are the 0-dim views of ``counters`` that the state holds."""

    device: torch.device
    dtype: torch.dtype
    grad_dtype: torch.dtype
    params: list[Tensor]
    names: list[str | None]
    state_dicts: list[dict[str, Any]]
    exp_avgs: list[Tensor]
    seconds: list[Tensor]
    sens: list[Tensor] | None
    counters: Tensor
    steps: list[Tensor]
    strides: list[tuple[int, ...]] | None  # the layout each gradient must have for the kernel (None: any)
    kernel_params: list[Tensor]  # what the kernel updates: the parameter, or its dense copy
    shadows: list[tuple[Tensor, Tensor]]  # (parameter, dense copy) where a parameter is not dense


class Bucket:
    """One launch of a plan: its members, its kernel's launcher (``set_grads``, ``set_options``, ``launch``) and
    what the per-step check compares with."""

    def __init__(self, members: Members, launcher: Any, state_keys: tuple[str, ...], grads: list[Tensor]):
        self.members = members
        self.launcher = launcher
        self.state_getter = itemgetter(*state_keys)
        self.state_tensors = list(chain.from_iterable(map(self.state_getter, members.state_dicts)))
        self.state_ptrs = list(map(Tensor.data_ptr, self.state_tensors))
        self.param_ptrs = list(map(Tensor.data_ptr, members.params))
        self.grad_meta = [(p.shape, g.dtype, p.device) for p, g in zip(members.params, grads, strict=True)]

    def gradients(self) -> tuple[list[Tensor], list[int]] | None:
        """This step's gradients (in the kernel's layout) and their addresses; None where anything the plan depends
        on has changed (a gradient missing or of another shape, dtype or device; a parameter or state tensor that
        moved or was replaced; a gradient without storage)."""
        m = self.members
        grads = [p.grad for p in m.params]
        try:
            if list(map(_GRAD_META, grads)) != self.grad_meta:
                return None
            if list(map(Tensor.data_ptr, m.params)) != self.param_ptrs:
                return None
            # the state tensors the dicts hold now, at the addresses of the tables (a tensor replaced by another at
            # the same address is the same memory: the plan holds the old ones, so only a view of them can be there)
            current = list(chain.from_iterable(map(self.state_getter, m.state_dicts)))
            if list(map(Tensor.data_ptr, current)) != self.state_ptrs:
                return None
            if m.strides is not None and list(map(Tensor.stride, grads)) != m.strides:
                grads = [_in_layout(g, p, s) for g, p, s in zip(grads, m.params, m.strides, strict=True)]
            return grads, list(map(Tensor.data_ptr, grads))
        except (AttributeError, KeyError, RuntimeError, TypeError):  # None, a missing key, a sparse gradient
            return None

    def prepare(self, grads: list[Tensor], pointers: list[int], group: dict[str, Any], capturing: bool) -> None:
        self.launcher.set_grads(grads, pointers, capturing)
        self.launcher.set_options(group, capturing)

    def run(self, observe: Any, stats: list | None, group: dict[str, Any], grads: list[Tensor]) -> None:
        m = self.members
        if stats is not None and m.sens is not None:  # diagnostics: before the kernel overwrites the state
            observe(stats, group, m.params, grads, m.sens, m.steps, m.names)
        m.counters.add_(1.0)
        self.launcher.launch()


def _in_layout(grad: Tensor, param: Tensor, strides: tuple[int, ...]) -> Tensor:
    """The gradient in the layout the kernel reads (a copy for this step where it has another)."""
    if grad.stride() == strides:
        return grad
    return torch.empty_strided(param.shape, strides, dtype=grad.dtype, device=grad.device).copy_(grad)


class TorchKernelLauncher:
    """The tensors that the fused CPU kernel cannot take (not contiguous, or not on the CPU): the single-tensor
    kernel, as the list path routes them, on the plan's counters."""

    def __init__(self, members: Members, adamax: bool):
        self.members = members
        self.kernel = adamax_single_tensor if adamax else adam_single_tensor
        self.grads: list[Tensor] | None = None
        self.options: F.StepOptions | None = None

    def set_grads(self, grads: list[Tensor], pointers: list[int], capturing: bool) -> None:
        self.grads = grads

    def set_options(self, group: dict[str, Any], capturing: bool) -> None:
        self.options = step_options(group)

    def launch(self) -> None:
        m, grads = self.members, self.grads
        self.grads = None  # not kept beyond the step: fairseq and zero_grad() free them
        self.kernel(m.params, grads, m.exp_avgs, m.seconds, m.sens, m.steps, options=self.options)


def step_options(group: dict[str, Any]) -> F.StepOptions:
    beta1, beta2 = group["betas"]
    return F.StepOptions(lr=float(group["lr"]), beta1=beta1, beta2=beta2, beta3=group["beta3"], eps=group["eps"],
                         weight_decay=group["weight_decay"], bias_correction=group["bias_correction"],
                         strength=float(group["sage_strength"]))  # fmt: skip


class GroupPlan:
    """The plan of one param group: its buckets, and what its check compares with."""

    def __init__(self, opt: Any, group: dict[str, Any], absent: list[Tensor], buckets: list[Bucket]):
        self.params_list = group["params"]
        self.params = list(group["params"])
        self.options = (group["impl"], group["sage"], group["capturable"])
        self.absent = absent  # the group's tensors without a gradient when the plan was built
        self.buckets = buckets
        self.observe = opt._sage_stats_observe

    @classmethod
    def build(cls, opt: Any, index: int, group: dict[str, Any]) -> GroupPlan | None:
        """The group's plan, after the list path's checks of every tensor it will update (errors name the tensor);
        None where the group's impl takes lists (``single_tensor``, ``foreach``, or ``auto``'s fallback to them)."""
        params = group["params"]
        grads = [p.grad for p in params]
        present = [i for i, g in enumerate(grads) if g is not None]
        member_params = [params[i] for i in present]
        absent = [params[i] for i, g in enumerate(grads) if g is None]
        if not member_params:  # nothing to step yet (the kernel is chosen when there is: the plan is rebuilt then)
            return cls(opt, group, absent, [])
        impl = F.resolve_impl(group["impl"], member_params)
        if group["capturable"] and impl != "triton":
            where = member_params[0].device if member_params else "no device"
            raise RuntimeError(
                f"SAGE capturable=True (param group {index}): impl={group['impl']!r} runs the {impl} kernel on these "
                f"tensors (on {where}), which reads the step counts on the host; only the triton kernel, on CUDA "
                "tensors, can be captured in a CUDA graph"
            )
        if impl not in ("triton", "fused"):
            return None
        named = opt._named(group)
        sage = group["sage"]
        states = [opt._init_state(p, sage) for p in member_params]
        second = opt._second_moment
        lists = _Lists(
            params=member_params,
            grads=[grads[i] for i in present],
            names=[named[i][0] for i in present],
            states=states,
            firsts=[s["exp_avg"] for s in states],
            seconds=[s[second] for s in states],
            sens=[s["exp_avg_sens"] for s in states] if sage else None,
            steps=[s["step"] for s in states],
        )
        F.check_tensors(lists.params, lists.grads, lists.firsts, lists.seconds, lists.sens, lists.steps,
                        second_name=second, param_names=lists.names)  # fmt: skip
        keys = ("step", "exp_avg", second) + (("exp_avg_sens",) if sage else ())
        adamax = second == "exp_inf"
        make = _triton_buckets if impl == "triton" else _fused_buckets
        return cls(opt, group, absent, make(lists, keys, adamax))

    def inputs(self, group: dict[str, Any], capturing: bool) -> list[tuple[list[Tensor], list[int]]] | None:
        """This step's gradients per bucket, with the launchers prepared (addresses, options); None where the plan is
        out of date. Raises (during a capture) before any tensor moves."""
        params = group["params"]
        if params is not self.params_list or len(params) != len(self.params) or not all(map(is_, params, self.params)):
            return None
        if (group["impl"], group["sage"], group["capturable"]) != self.options:
            return None
        if self.absent and not all(map(is_, [p.grad for p in self.absent], repeat(None))):
            return None  # a tensor that had no gradient has one now
        inputs = []
        for bucket in self.buckets:
            found = bucket.gradients()
            if found is None:
                return None
            inputs.append(found)
        for bucket, (grads, pointers) in zip(self.buckets, inputs, strict=True):
            bucket.prepare(grads, pointers, group, capturing)
        return inputs

    def step(self, inputs: list[tuple[list[Tensor], list[int]]], group: dict[str, Any], stats: list | None) -> None:
        for bucket, (grads, _) in zip(self.buckets, inputs, strict=True):
            bucket.run(self.observe, stats, group, grads)


@dataclass
class _Lists:
    """A group's tensors with a gradient, aligned (the plan's raw material)."""

    params: list[Tensor]
    grads: list[Tensor]
    names: list[str | None]
    states: list[dict[str, Any]]
    firsts: list[Tensor]
    seconds: list[Tensor]
    sens: list[Tensor] | None
    steps: list[Tensor]

    def pick(self, idx: list[int]) -> _Lists:
        def sub(items):
            return None if items is None else [items[i] for i in idx]

        return _Lists(*(sub(getattr(self, name)) for name in self.__dataclass_fields__))


def _members(lists: _Lists, device: torch.device, grad_dtype: torch.dtype, layout: str, keys: tuple[str, ...]):
    """A bucket's members, with its counters (the state's ``step`` becomes a view of them). ``layout``: ``"dense"``
    (triton: every tensor in its parameter's layout when that is dense, else contiguous with a dense copy of the
    parameter; state tensors of another layout are replaced by copies in it), ``"contiguous"`` (the CPU kernel: the
    caller picked contiguous tensors) or ``"any"`` (the single-tensor kernel)."""
    strides: list[tuple[int, ...]] | None = [] if layout != "any" else None
    kernel_params, shadows = [], []
    for p, state in zip(lists.params, lists.states, strict=True):
        if layout == "any":
            kernel_params.append(p)
            continue
        if layout == "dense" and dense(p):
            kernel_params.append(p)
            want = tuple(p.stride())
        else:
            want = contiguous_strides(p.shape)
            if p.stride() == want:
                kernel_params.append(p)
            else:
                shadow = torch.empty(p.shape, dtype=p.dtype, device=p.device)
                kernel_params.append(shadow)
                shadows.append((p, shadow))
        strides.append(want)
        for key in keys[1:]:
            t = state[key]
            if t.stride() != want or not dense(t):
                state[key] = torch.empty_strided(p.shape, want, dtype=t.dtype, device=t.device).copy_(t)
    counters = _counters(lists.steps, device)
    steps = list(counters.unbind())
    for state, step in zip(lists.states, steps, strict=True):
        state["step"] = step
    second = keys[2]
    return Members(
        device=device,
        dtype=lists.params[0].dtype,
        grad_dtype=grad_dtype,
        params=lists.params,
        names=lists.names,
        state_dicts=lists.states,
        exp_avgs=[s["exp_avg"] for s in lists.states],
        seconds=[s[second] for s in lists.states],
        sens=[s["exp_avg_sens"] for s in lists.states] if lists.sens is not None else None,
        counters=counters,
        steps=steps,
        strides=strides,
        kernel_params=kernel_params,
        shadows=shadows,
    )


def _triton_buckets(lists: _Lists, keys: tuple[str, ...], adamax: bool) -> list[Bucket]:
    """One bucket per (device, parameter dtype, gradient dtype): one launch each, as the list path launches."""
    by_kind: dict[tuple, list[int]] = defaultdict(list)
    for i, (p, g) in enumerate(zip(lists.params, lists.grads, strict=True)):
        by_kind[(p.device, p.dtype, g.dtype)].append(i)
    buckets = []
    for (device, dtype, grad_dtype), idx in by_kind.items():
        part = lists.pick(idx)
        checked = [part.params, part.grads, part.firsts, part.seconds] + ([part.sens] if part.sens is not None else [])
        _fused_triton._check_group(idx[0], checked, device, _fused_triton._STATE_DTYPE.get(dtype))
        members = _members(part, device, grad_dtype, "dense", keys)
        buckets.append(Bucket(members, _fused_triton.PlanLaunch(members, adamax), keys, part.grads))
    return buckets


def _fused_buckets(lists: _Lists, keys: tuple[str, ...], adamax: bool) -> list[Bucket]:
    """The CPU kernel: one bucket per parameter dtype of the tensors it takes (``_fused_cpu.eligible``, decided here
    once), and one for the rest (the single-tensor kernel), as the list path routes them."""
    by_dtype: dict[torch.dtype, list[int]] = defaultdict(list)
    rest = []
    for i, (p, g, state) in enumerate(zip(lists.params, lists.grads, lists.states, strict=True)):
        if _fused_cpu.eligible(p, g, *(state[k] for k in keys[1:])):
            by_dtype[p.dtype].append(i)
        else:
            rest.append(i)
    cpu = torch.device("cpu")
    buckets = []
    for dtype, idx in by_dtype.items():
        part = lists.pick(idx)
        members = _members(part, cpu, dtype, "contiguous", keys)
        buckets.append(Bucket(members, _fused_cpu.PlanLaunch(members, adamax), keys, part.grads))
    if rest:
        part = lists.pick(rest)
        members = _members(part, cpu, part.grads[0].dtype, "any", keys)  # the gradients' dtypes: as they come
        buckets.append(Bucket(members, TorchKernelLauncher(members, adamax), keys, part.grads))
    return buckets
