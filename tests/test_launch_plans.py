"""Launch plans (fairseq_plugins/optim/_plan.py): the host side of the triton step (on CPU tensors in Triton's
interpreter) and of the fused CPU step, built once per param group and rebuilt when something it depends on changes.

- every change that moves memory (or the set of tensors) between two steps: the kernel's tables point at the
  current tensors at every launch (read from the tables themselves), the plan is rebuilt exactly when it must be, and
  the run ends where the list path (the code before plans, ``_launch_plans = False``) ends after the same changes;
- the plan path against the list path over many steps and every option set of tests/optim_infos.py;
- states saved by the list path (step counts on the CPU) and by the CPU impls load and continue identically;
- no host read of a tensor in a step (what would synchronise with a GPU), with lr and strength as tensors;
- ``capturable``: refused where it cannot work, naming the option; the capture rules;
- the host work of a step per extra tensor (20 and 400 tensors), against the list path.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import pickle
import sys
from collections import Counter

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fairseq_plugins.optim import AdamSAGE, _fused_cpu, _plan
from fairseq_plugins.optim import _fused_triton as FT
from fairseq_plugins.optim import sage as sage_module
from tests import test_optim_reference as reference_tests
from tests.optim_infos import OPTIM_INPUTS, OPTIMIZERS

HAS_TRITON = importlib.util.find_spec("triton") is not None
NEEDS_TRITON = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (make setup installs it)")
NEEDS_FUSED = pytest.mark.skipif(not _fused_cpu.available(), reason=f"no fused kernel here: {_fused_cpu.error()}")
PLAN_IMPLS = [pytest.param("triton", marks=NEEDS_TRITON), pytest.param("fused", marks=NEEDS_FUSED)]
KW = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.05, beta3=0.8, sage_strength=0.7)


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """CPU tensors run the triton kernel in Triton's interpreter (read at each call; the rest of the suite never
    sees the variable)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _model(seed: int = 0) -> nn.Module:
    """A conv weight (4-D: channels_last moves it), a square matrix (a transposed gradient fits it), biases."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten(), nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 4))


def _set_grads(params, step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)


def _params(opt) -> list[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


# ---------------------------------------------------------------- the tables at every launch


class TableSpy:
    """At every launch of a plan (triton or fused CPU), the addresses its tables hold are those of the optimizer's
    current tensors: for each row, a parameter with a gradient, its state tensors, its gradient and its counter."""

    def __init__(self, monkeypatch, opt):
        self.opt = opt
        self.rows: list[tuple] = []
        self.launches = 0
        launch = FT._launch

        def triton_spy(kernel, grid, args, constants):
            if constants["PLAN"]:
                table, grads, counters = args[0].view(-1, 4).tolist(), args[1].tolist(), args[4]
                steps = [counters.data_ptr() + 4 * i for i in range(len(grads))]
                self._check([(*row, g, s) for row, g, s in zip(table, grads, steps, strict=True)])
            launch(kernel, grid, args, constants)

        monkeypatch.setattr(FT, "_launch", triton_spy)
        cpu_launch = _fused_cpu.PlanLaunch.launch

        def cpu_spy(launcher):
            n, counters = launcher.n, launcher.members.counters
            columns = [list(a) for a in launcher.arrays] + [list(launcher.sens) if launcher.sens else [0] * n]
            grads, steps = list(launcher.grads), [counters.data_ptr() + 4 * i for i in range(n)]
            self._check([(p, m, v, s, g, c) for p, m, v, s, g, c in zip(*columns, grads, steps, strict=True)])
            cpu_launch(launcher)

        monkeypatch.setattr(_fused_cpu.PlanLaunch, "launch", cpu_spy)

    def expected(self) -> dict[tuple, tuple[int | None]]:
        """(parameter, exp_avg, second moment, exp_avg_sens or 0, step) -> the gradient's address, or None where the
        gradient is not in the parameter's layout (the kernel then reads a copy in it, made for the step)."""
        rows = {}
        second = self.opt._second_moment
        for group in self.opt.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = self.opt.state[p]
                sens = s["exp_avg_sens"].data_ptr() if group["sage"] else 0
                key = (p.data_ptr(), s["exp_avg"].data_ptr(), s[second].data_ptr(), sens, s["step"].data_ptr())
                rows[key] = p.grad.data_ptr() if p.grad.stride() == p.stride() else None
        return rows

    def _check(self, launched: list[tuple]) -> None:
        self.launches += 1
        expected = self.expected()
        for row in launched:
            p, m, v, s, g, c = (0 if a is None else a for a in row)
            key = (p, m, v, s, c)
            assert key in expected, f"a launch with stale addresses: {key} is not among the current tensors' {expected}"
            assert expected[key] in (None, g), f"a launch with a stale gradient address: {g}, not {expected[key]}"
        self.rows += launched


def _build_counter(monkeypatch) -> list[int]:
    built = []
    build = _plan.GroupPlan.build

    def counting(opt, index, group):
        built.append(index)
        return build(opt, index, group)

    monkeypatch.setattr(_plan.GroupPlan, "build", staticmethod(counting))
    return built


# What changes between two steps: (description, change(model, opt, step), whether the plan must be rebuilt). Each runs
# on the plan path and, identically, on the list path; both must end in the same place.
def _param_data(model, opt, t):
    model[2].weight.data = model[2].weight.data.clone()


def _channels_last(model, opt, t):
    if t == 1:  # Module._apply: the conv weight gets new storage (p.data = ...); once (then it is channels_last)
        model.to(memory_format=torch.channels_last)


def _swap_tensors(model, opt, t):
    if t != 1:
        return
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(memory_format=torch.channels_last)  # the same objects, their contents swapped
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)


def _state_entry(key):
    def change(model, opt, t):
        state = opt.state[model[2].weight]
        state[key] = state[key].clone()

    return change


def _state_data(key):
    def change(model, opt, t):
        state = opt.state[model[4].weight]
        state[key].data = state[key].data.clone()  # the way "move the optimizer to a device" helpers do it

    return change


def _step_count(model, opt, t):
    opt.state[model[2].bias]["step"] = torch.tensor(20.0)  # a count set by hand: the next step is the 21st


def _state_dict_replaced(model, opt, t):
    opt.state[model[0].weight] = dict(opt.state[model[0].weight])


def _state_cleared(model, opt, t):
    opt.state.clear()


def _param_list_reversed(model, opt, t):
    opt.param_groups[0]["params"] = list(reversed(opt.param_groups[0]["params"]))


def _param_appended(model, opt, t):
    extra = torch.nn.Parameter(torch.ones(3, dtype=torch.float64) * 0.5)
    opt.param_groups[0]["params"].append(extra)
    setattr(model, f"extra{t}", extra)  # the model's parameters() now include it (so the run gives it gradients)


def _param_group_added(model, opt, t):
    extra = torch.nn.Parameter(torch.ones(5, dtype=torch.float64) * 0.25)
    opt.add_param_group({"params": [extra], "sage": False})
    setattr(model, f"extra{t}", extra)


def _grad_none(model, opt, t):
    model[4].bias.grad = None  # this step without it: its count falls behind


def _grad_transposed(model, opt, t):
    model[4].weight.grad = model[4].weight.grad.t().contiguous().t()  # same shape and values, column-major


def _lr_and_betas(model, opt, t):
    group = opt.param_groups[0]
    group["lr"] = 3e-3
    group["betas"] = (0.8, 0.95)
    group["bias_correction"] = not group["bias_correction"]


def _lr_tensor_in_place(model, opt, t):
    if t == 1:
        opt.param_groups[0]["lr"] = torch.tensor(1e-2, dtype=torch.float64)
    else:
        opt.param_groups[0]["lr"].mul_(0.5)


def _strength_tensor(model, opt, t):
    opt.set_sage_strength(torch.tensor(0.25 * t))


def _sage_off(model, opt, t):
    opt.param_groups[0]["sage"] = False


def _reloaded(model, opt, t):
    opt.load_state_dict(_roundtrip(opt.state_dict()))  # the same values in new tensors, as from a checkpoint


def _names(model, opt, t):
    opt.name_parameters(_params(opt), [f"p{i}" for i in range(len(_params(opt)))])


# (description, change, the steps whose plan is built): the change runs before steps 1 and 3 of 0-4
TWICE, ONCE, NEVER = (0, 1, 3), (0, 1), (0,)
CHANGES = [
    ("parameter .data replaced", _param_data, TWICE),
    ("model.to(memory_format) (p.data = ...)", _channels_last, ONCE),
    ("model.to with swap_tensors", _swap_tensors, ONCE),
    ("state exp_avg replaced", _state_entry("exp_avg"), TWICE),
    ("state exp_avg_sens replaced", _state_entry("exp_avg_sens"), TWICE),
    ("state second moment moved (.data)", None, TWICE),  # the optimizer's own key: see the test
    ("state step moved (.data)", _state_data("step"), TWICE),
    ("state step replaced", _step_count, TWICE),
    ("a tensor's state dict replaced", _state_dict_replaced, TWICE),
    ("state cleared", _state_cleared, TWICE),
    ("parameter list replaced", _param_list_reversed, TWICE),
    ("parameter appended to a group", _param_appended, TWICE),
    ("add_param_group", _param_group_added, TWICE),
    ("gradient became None (and back)", _grad_none, (0, 1, 2, 3, 4)),
    ("gradient in another layout", _grad_transposed, NEVER),
    ("lr, betas, bias correction changed", _lr_and_betas, NEVER),
    ("lr a tensor changed in place", _lr_tensor_in_place, NEVER),
    ("strength a tensor", _strength_tensor, NEVER),
    ("sage switched off in a group", _sage_off, ONCE),
    ("name_parameters", _names, TWICE),
    ("load_state_dict", _reloaded, TWICE),
]


def _run(info, impl, change, plans: bool, monkeypatch=None, steps: int = 5):
    model = _model().double()
    opt = info.optim_cls(model.parameters(), impl=impl, **KW)
    opt._launch_plans = plans
    spy = TableSpy(monkeypatch, opt) if monkeypatch is not None else None
    built = _build_counter(monkeypatch) if monkeypatch is not None else []
    builds_at = []
    for t in range(steps):
        if t in (1, 3) and change is not None:
            change(model, opt, t)
        _set_grads(model.parameters(), t)
        if t in (1, 3) and change is _grad_none:
            _grad_none(model, opt, t)
        if t in (1, 3) and change is _grad_transposed:
            _grad_transposed(model, opt, t)
        before = len(built)
        opt.step()
        builds_at.append(len(built) - before)
    return model, opt, spy, builds_at


@pytest.mark.parametrize("impl", PLAN_IMPLS)
@pytest.mark.parametrize("info", OPTIMIZERS, ids=lambda info: info.name)
@pytest.mark.parametrize("desc, change, built", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_change_between_steps(monkeypatch, info, impl, desc, change, built):
    """The plan is rebuilt at the step after a change exactly when the change moved memory or changed the set of
    tensors; no launch ever sees a stale address; the run ends as the list path's with the same changes."""
    if change is None:
        change = _state_data(info.second_moment)
    model, opt, spy, builds_at = _run(info, impl, change, plans=True, monkeypatch=monkeypatch)
    monkeypatch.undo()  # the list path's run: no spies
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    twin_model, twin, _, _ = _run(info, impl, change, plans=False)
    assert spy.launches >= 5
    assert [t for t, n in enumerate(builds_at) if n] == list(built), builds_at
    for (name, p), q in zip(model.named_parameters(), twin_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14, msg=name)
        for key, value in opt.state[p].items():
            torch.testing.assert_close(value, twin.state[q][key], rtol=1e-12, atol=1e-14, msg=f"{name} {key}")


@pytest.mark.parametrize("copier", ["deepcopy", "pickle"])
@pytest.mark.parametrize("impl", PLAN_IMPLS)
def test_a_copy_builds_its_own_plan(monkeypatch, impl, copier):
    """A copy (deepcopy, pickle: ``__setstate__``) of an optimizer whose plan is built starts without one, and its
    launches see only its own tensors: the original's do not move when the copy steps."""
    model = _model()
    opt = AdamSAGE(model.parameters(), impl=impl)
    _set_grads(model.parameters(), 0)
    opt.step()
    assert opt._plans is not None
    twin = copy.deepcopy(opt) if copier == "deepcopy" else pickle.loads(pickle.dumps(opt))
    assert twin._plans is None
    spy = TableSpy(monkeypatch, twin)
    _set_grads(_params(twin), 1)
    before = [p.detach().clone() for p in model.parameters()]
    twin.step()
    assert spy.launches >= 1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(_params(twin), before, strict=True))


@pytest.mark.parametrize("impl", PLAN_IMPLS)
def test_a_moved_state_tensor_is_the_one_updated(impl):
    """After a state tensor moved (``.data`` replaced), the step updates the tensor the state holds now, never the
    old memory (which the plan's tables would still point at had it not been rebuilt)."""
    model = _model().double()
    opt = AdamSAGE(model.parameters(), impl=impl, **KW)
    _set_grads(model.parameters(), 0)
    opt.step()
    state = opt.state[model[2].weight]
    old = state["exp_avg"].data
    kept = old.clone()
    state["exp_avg"].data = old.clone()
    _set_grads(model.parameters(), 1)
    opt.step()
    assert torch.equal(old, kept), "the old memory was written"
    assert not torch.equal(state["exp_avg"], kept)


@pytest.mark.parametrize("impl", PLAN_IMPLS)
def test_a_sparse_gradient_after_the_plan_is_refused_before_anything_moves(impl):
    model = nn.ModuleDict({"dense": nn.Linear(3, 3), "emb": nn.Embedding(5, 3, sparse=True)})
    opt = AdamSAGE(model.named_parameters(), impl=impl)
    model["dense"](model["emb"](torch.tensor([1, 2]))).sum().backward()
    model["emb"].weight.grad = model["emb"].weight.grad.to_dense()
    opt.step()
    opt.zero_grad()
    model["dense"](model["emb"](torch.tensor([1, 2]))).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    counts = [float(opt.state[p]["step"]) for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"sparse gradients: parameter 'emb.weight' \(group 0, index 2\)"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert [float(opt.state[p]["step"]) for p in model.parameters()] == counts


# ---------------------------------------------------------------- parity with the list path


def _run_steps(info, opt_input, dtype, impl, plans, steps):
    params = reference_tests._make_params(dtype)
    opt = info.optim_cls(opt_input.groups(params), **opt_input.kwargs, impl=impl)
    opt._launch_plans = plans
    for t in range(1, steps + 1):
        for p, gr in zip(params, reference_tests._grads(params, t), strict=True):
            p.grad = None if gr is None else gr.clone()
        opt.step()
    return params, opt


@pytest.mark.parametrize("impl", PLAN_IMPLS)
@pytest.mark.parametrize("opt_input", OPTIM_INPUTS, ids=lambda x: x.desc)
@pytest.mark.parametrize("info", OPTIMIZERS, ids=lambda info: info.name)
def test_the_plan_path_steps_as_the_list_path(info, opt_input, impl):
    """40 steps of every option set (non-contiguous tensors, a tensor whose gradient comes and goes, an unselected
    group), in float32: the plan path and the list path (the code before plans) end together, parameters and every
    state tensor, and the step counts are the same float32 0-dim tensors on the parameters' device."""
    (ours, opt), (theirs, ref) = (_run_steps(info, opt_input, torch.float32, impl, plans, 40) for plans in (1, 0))
    for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=f"param {i}")
        assert opt.state[p].keys() == ref.state[q].keys()
        for key, value in opt.state[p].items():
            if key == "step":
                assert value.shape == () and value.dtype == torch.float32 and value.device == p.device
                assert float(value) == float(ref.state[q][key])
            else:
                torch.testing.assert_close(value, ref.state[q][key], rtol=1e-5, atol=1e-7, msg=f"{key} {i}")


# ---------------------------------------------------------------- states saved by other paths


def _roundtrip(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


SAVERS = [
    pytest.param("single_tensor", False, id="list-path-single_tensor"),
    pytest.param("fused", False, id="list-path-fused", marks=NEEDS_FUSED),
    pytest.param("fused", True, id="plan-fused", marks=NEEDS_FUSED),
    pytest.param("triton", False, id="list-path-triton", marks=NEEDS_TRITON),
    pytest.param("triton", True, id="plan-triton", marks=NEEDS_TRITON),
]


@pytest.mark.parametrize("impl", PLAN_IMPLS)
@pytest.mark.parametrize("saver_impl, saver_plans", SAVERS)
@pytest.mark.parametrize("info", OPTIMIZERS, ids=lambda info: info.name)
def test_a_saved_state_loads_and_continues_identically(info, saver_impl, saver_plans, impl):
    """A state saved (torch.save, weights_only load) by the list path (step counts on the CPU) or by a plan, of any
    impl, loads into a plan of ``impl`` and continues exactly as the saving optimizer continues when it switches to
    that impl itself: the same parameters and state, bit for bit."""
    model = _model().double()
    opt = info.optim_cls(model.parameters(), impl=saver_impl, **KW)
    opt._launch_plans = saver_plans
    for t in range(3):
        _set_grads(model.parameters(), t)
        opt.step()
    saved = _roundtrip(opt.state_dict())
    for entry in saved["state"].values():
        assert entry["step"].shape == () and entry["step"].dtype == torch.float32  # torch's per-parameter layout
    resumed_model = copy.deepcopy(model)
    resumed = info.optim_cls(resumed_model.parameters(), impl=impl, **KW)
    resumed.load_state_dict(saved)
    opt._launch_plans = True
    for group in opt.param_groups:
        group["impl"] = impl
    for t in range(3, 7):
        for m in (model, resumed_model):
            _set_grads(m.parameters(), t)
        opt.step()
        resumed.step()
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, resumed.state[q][key]), key


@pytest.mark.parametrize("impl", PLAN_IMPLS)
def test_the_step_counts_are_views_of_one_buffer_and_save_per_parameter(impl):
    """torch's layout: one float32 0-dim ``step`` per parameter, on its device; here views of the plan's counters
    (one ``add_`` per step), saved and loaded as separate per-parameter tensors."""
    model = _model()
    opt = AdamSAGE(model.parameters(), impl=impl)
    for t in range(2):
        _set_grads(model.parameters(), t)
        opt.step()
    steps = [opt.state[p]["step"] for p in model.parameters()]
    assert len({s.untyped_storage().data_ptr() for s in steps}) == 1
    assert all(s.shape == () and s.dtype == torch.float32 and float(s) == 2 for s in steps)
    loaded = _roundtrip(opt.state_dict())
    assert [float(e["step"]) for e in loaded["state"].values()] == [2.0] * len(steps)


# ---------------------------------------------------------------- no host read in a step


HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu", "__array__"}


class HostReads(TorchFunctionMode):
    """Every call that reads a tensor's value on the host (on a GPU: a synchronisation), outside Triton's own
    frames (its interpreter reads the CPU tensors it runs on, as a GPU does)."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self._triton = os.path.dirname(importlib.util.find_spec("triton").origin) if HAS_TRITON else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in HOST_READS or (name == "to" and "cpu" in map(str, (*args[1:], *(kwargs or {}).values()))):
            frame = sys._getframe(1)
            inside = False
            while frame is not None:
                if self._triton and frame.f_code.co_filename.startswith(self._triton):
                    inside = True
                    break
                frame = frame.f_back
            if not inside:
                self.seen.append(name)
        return func(*args, **(kwargs or {}))


@NEEDS_TRITON
@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_a_triton_step_reads_no_tensor_on_the_host(lr_kind):
    """After the first step (which builds the plan), a step reads no tensor value on the host: the step counts, a
    tensor lr and a tensor strength stay where they are, a float lr that changes at every step (a scheduler) is a
    fill. The list path reads the step counts and the lr at every step."""
    model = _model()
    lr = torch.tensor(1e-2) if lr_kind == "tensor" else 1e-2
    opt = AdamSAGE(model.parameters(), lr=lr, impl="triton")
    opt.set_sage_strength(torch.tensor(0.5))
    _set_grads(model.parameters(), 0)
    opt.step()
    for t in range(1, 4):
        if lr_kind == "float":
            opt.param_groups[0]["lr"] = 1e-2 / t
        else:
            opt.param_groups[0]["lr"].fill_(1e-2 / t)
        _set_grads(model.parameters(), t)
        with HostReads() as reads:
            opt.step()
        assert reads.seen == [], reads.seen
    twin = AdamSAGE(_model().parameters(), lr=lr, impl="triton")
    twin._launch_plans = False
    _set_grads(_params(twin), 0)
    with HostReads() as reads:
        twin.step()
    assert reads.seen, "the list path reads the step counts on the host: this check sees host reads"


# ---------------------------------------------------------------- lr and strength as tensors


@pytest.mark.parametrize("impl", ["single_tensor", "foreach", *PLAN_IMPLS])
@pytest.mark.parametrize("info", OPTIMIZERS, ids=lambda info: info.name)
def test_a_tensor_strength_steps_as_its_float_and_is_read_at_every_step(info, impl):
    runs = {}
    for kind, strength in (("float", 0.5), ("tensor", torch.tensor(0.5))):
        model = _model().double()
        opt = info.optim_cls(model.parameters(), impl=impl, **{**KW, "sage_strength": strength})
        for t in range(2):
            _set_grads(model.parameters(), t)
            opt.step()
        runs[kind] = model, opt
    for p, q in zip(runs["float"][0].parameters(), runs["tensor"][0].parameters(), strict=True):
        assert torch.equal(p, q)
    model, opt = runs["tensor"]
    assert isinstance(opt.sage_strength, torch.Tensor)
    opt.sage_strength.fill_(0.0)  # in place: the next step is plain Adam(W)
    plain_model, plain = copy.deepcopy((model, opt))  # one copy: the optimizer's tensors are the model's
    plain.set_sage_strength(0.0)
    for m, o in ((model, opt), (plain_model, plain)):
        _set_grads(m.parameters(), 2)
        o.step()
    for p, q in zip(model.parameters(), plain_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_bad_tensor_strength_is_refused():
    opt = AdamSAGE(_model().parameters())
    with pytest.raises(ValueError, match=r"sage_strength must be a number or a one-element tensor"):
        opt.set_sage_strength(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match=r"sage_strength must be >= 0.0, got tensor\(-1.\)"):
        AdamSAGE(_model().parameters(), sage_strength=torch.tensor(-1.0))


# ---------------------------------------------------------------- capturable


@pytest.mark.parametrize("impl", ["fused", "single_tensor", "foreach"])
def test_capturable_is_refused_with_an_impl_that_reads_the_host(impl):
    with pytest.raises(ValueError, match=rf"capturable=True needs impl 'triton' or 'auto'.*impl='{impl}'"):
        AdamSAGE(_model().parameters(), impl=impl, capturable=True)
    opt = AdamSAGE(_model().parameters(), impl="triton", capturable=True)
    with pytest.raises(ValueError, match=r"capturable=True needs impl"):
        opt.add_param_group({"params": [torch.zeros(2)], "impl": impl})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r"capturable must be True or False, got 'yes'"):
        AdamSAGE(_model().parameters(), capturable="yes")


def test_capturable_with_auto_on_cpu_tensors_is_refused_at_the_first_step(monkeypatch):
    """Outside the interpreter, ``auto`` picks the fused CPU kernel for CPU tensors: no graph can capture it."""
    monkeypatch.delenv("TRITON_INTERPRET")
    model = _model()
    opt = AdamSAGE(model.parameters(), capturable=True)
    _set_grads(model.parameters(), 0)
    before = [p.detach().clone() for p in model.parameters()]
    refused = r"capturable=True \(param group 0\): impl='auto' runs the (fused|single_tensor) kernel"
    with pytest.raises(RuntimeError, match=refused):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@NEEDS_TRITON
def test_a_capturable_group_without_gradients_is_not_refused():
    """A group whose tensors have no gradient yet (frozen, or not reached by this update) has nothing to capture and
    no kernel to choose: with ``auto`` it is not refused for the kernel ``auto`` would pick for no tensors."""
    model = _model()
    opt = AdamSAGE([{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "impl": "auto"}],
                   impl="triton", capturable=True)  # fmt: skip
    for t in range(2):
        _set_grads(model[0].parameters(), t)
        opt.step()
    assert float(opt.state[model[0].weight]["step"]) == 2 and not opt.state[model[2].weight]


@NEEDS_TRITON
def test_capturable_steps_as_not_capturable_and_survives_copies_and_loads():
    runs = []
    for capturable in (False, True):
        model = _model()
        opt = AdamSAGE(model.parameters(), impl="triton", capturable=capturable, **KW)
        for t in range(3):
            _set_grads(model.parameters(), t)
            opt.step()
        runs.append((model, opt))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        assert torch.equal(p, q)
    opt = runs[1][1]
    assert pickle.loads(pickle.dumps(opt)).param_groups[0]["capturable"] is True
    other = AdamSAGE(_model().parameters(), impl="triton")
    other.load_state_dict(opt.state_dict())
    assert other.param_groups[0]["capturable"] is False  # the machine's choice, as impl


@NEEDS_TRITON
def test_the_capture_rules(monkeypatch):
    """While a CUDA graph captures (simulated here: the capture flag is CUDA's), a step refuses what it cannot
    capture, before anything moves: an optimizer that is not capturable (as torch's), a plan still to be built, a
    gradient that moved, statistics; with static gradients after a warm-up step it runs as an uncaptured step."""
    model = _model()
    gen = torch.Generator().manual_seed(3)
    static = [torch.randn(p.shape, generator=gen) for p in model.parameters()]
    opt = AdamSAGE(model.parameters(), impl="triton", capturable=True, **KW)
    twin_model = copy.deepcopy(model)
    twin = AdamSAGE(twin_model.parameters(), impl="triton", **KW)
    for p, q, g in zip(model.parameters(), twin_model.parameters(), static, strict=True):
        p.grad, q.grad = g, g.clone()
    monkeypatch.setattr(sage_module, "_capturing", lambda: True)
    with pytest.raises(RuntimeError, match=r"would build its launch plan.*run one step outside the capture"):
        opt.step()
    with pytest.raises(RuntimeError, match=r"param_groups have capturable=False: construct it with capturable=True"):
        twin.step()
    monkeypatch.setattr(sage_module, "_capturing", lambda: False)
    opt.step()
    twin.step()
    monkeypatch.setattr(sage_module, "_capturing", lambda: True)
    opt.step()  # "captured": static gradients, a plan built before
    monkeypatch.setattr(sage_module, "_capturing", lambda: False)
    twin.step()
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)
    monkeypatch.setattr(sage_module, "_capturing", lambda: True)
    before = [p.detach().clone() for p in model.parameters()]
    opt.request_sage_stats()
    with pytest.raises(RuntimeError, match=r"statistics .* request them in a step that is not being captured"):
        opt.step()
    opt._sage_stats_request = None
    model[0].weight.grad = model[0].weight.grad.clone()  # moved: a replay would read the old address
    with pytest.raises(RuntimeError, match=r"capturable=True: .*(gradients must be static|build its launch plan)"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_fairseq_offers_no_capturable():
    """Decision: fairseq-train never captures its optimizer step in a CUDA graph (its update reads the loss and the
    gradient norm on the host), so --optimizer adam_sage has no capturable option and builds the optimizer without."""
    pytest.importorskip("fairseq")
    from fairseq_plugins.fairseq_optim import FairseqAdamaxSAGEConfig, FairseqAdamSAGEConfig

    for config in (FairseqAdamSAGEConfig, FairseqAdamaxSAGEConfig):
        assert not any("capturable" in name for name in config.__dataclass_fields__)
    assert AdamSAGE(_model().parameters()).param_groups[0]["capturable"] is False


# ---------------------------------------------------------------- the fused CPU path's per-step work


@NEEDS_FUSED
def test_the_fused_cpu_step_decides_eligibility_and_builds_its_arrays_once(monkeypatch):
    model = _model()
    opt = AdamSAGE(model.parameters(), impl="fused")
    _set_grads(model.parameters(), 0)
    opt.step()
    calls = Counter()
    for name in ("eligible", "_pointers"):
        original = getattr(_fused_cpu, name)
        monkeypatch.setattr(_fused_cpu, name, lambda *a, _f=original, _n=name: (calls.update([_n]), _f(*a))[1])
    for t in range(1, 4):
        _set_grads(model.parameters(), t)
        opt.step()
    assert calls == Counter(), calls


# ---------------------------------------------------------------- host work per step


def _wrap_tensor_methods():
    """Every public method of torch's tensors as a Python function, so that a call made from C (``map`` over a
    list) is seen by sys.setprofile too; returns the undo."""
    base = torch._C.TensorBase
    names = [k for k, v in vars(base).items() if not k.startswith("_") and type(v).__name__ == "method_descriptor"]
    added = [k for k in names if k not in vars(torch.Tensor)]

    def wrap(method):
        def tensor_method(self, *args, **kwargs):
            return method(self, *args, **kwargs)

        return tensor_method

    for k in added:
        setattr(torch.Tensor, k, wrap(getattr(base, k)))

    def undo():
        for k in added:
            delattr(torch.Tensor, k)

    return undo


def _host_calls(n: int, impl: str, plans: bool, wrapped: bool) -> int:
    """Python and C calls that one step (the third) makes outside Triton's frames, for ``n`` tensors."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, generator=gen) for _ in range(n)]
    opt = AdamSAGE(params, impl=impl)
    opt._launch_plans = plans
    for _ in range(2):
        _set_grads(params, 0)
        opt.step()
    _set_grads(params, 1)
    triton_dir = os.path.dirname(importlib.util.find_spec("triton").origin) if HAS_TRITON else "//"
    seen = Counter()
    depth = 0

    def profile(frame, event, arg):
        nonlocal depth
        if event == "call":
            if depth or frame.f_code.co_filename.startswith(triton_dir):
                depth += 1
            else:
                seen[frame.f_code.co_name] += 1
        elif event == "return" and depth:
            depth -= 1
        elif event == "c_call" and not depth and frame.f_code.co_name != "tensor_method":
            seen["C"] += 1  # (a wrapped method's own call is counted once, as the wrapper)

    undo = _wrap_tensor_methods() if wrapped else None
    sys.setprofile(profile)
    try:
        opt.step()
    finally:
        sys.setprofile(None)
        if undo:
            undo()
    return sum(seen.values())


@pytest.mark.parametrize("impl", PLAN_IMPLS)
def test_host_work_per_extra_tensor(impl, capsys):
    """The issue's measure: the Python and C calls that sys.setprofile sees in one step outside Triton's frames, for
    20 and for 400 tensors; per extra tensor, the list path (the code before plans) makes 17 (triton); a plan reads
    the gradients and checks the tables in C-level loops: none. The stricter count also sees torch's tensor methods
    when C calls them (``map``): a plan calls 7 per tensor (the gradient's address and strides, and the addresses of
    the parameter and its 4 state tensors, which is how it sees memory that moved)."""
    per_tensor = {}
    for plans in (False, True):
        for wrapped in (False, True):
            few, many = (_host_calls(n, impl, plans, wrapped) for n in (20, 400))
            per_tensor[(plans, wrapped)] = (many - few) / 380
    with capsys.disabled():
        print(f"\n{impl}: calls per extra tensor: list path {per_tensor[(False, False)]:.2f} (tensor methods from C "
              f"counted: {per_tensor[(False, True)]:.2f}); plan {per_tensor[(True, False)]:.2f} "
              f"({per_tensor[(True, True)]:.2f})")  # fmt: skip
    assert per_tensor[(True, False)] <= 3  # the target: reading gradient pointers and little else
    assert per_tensor[(True, True)] <= 7
    assert per_tensor[(False, False)] >= 17 and per_tensor[(False, True)] > per_tensor[(True, True)]
