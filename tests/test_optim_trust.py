"""What the optimizers refuse, before anything is written: a saved state that does not fit its parameters (every impl;
in a subprocess, so a memory fault fails the test instead of killing pytest), a changed selection, complex or integer
parameters, bad options in any group; and what they warn about: a selection whose tensors get no gradient, and a
CUDA machine where the Triton kernel that ``auto`` picks cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

from fairseq_plugins.optim import AdamSAGE, _fused_cpu
from fairseq_plugins.optim._functional import StepOptions
from fairseq_plugins.optim.saved_state import SelectionChangedError
from tests.fairseq_utils import ROOT
from tests.optim_infos import cases


def _train(opt, params, steps=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


def _snapshot(opt):
    return {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}


# ---------------------------------------------------------------- a state that does not fit (issue: SIGSEGV)

_MISFIT = textwrap.dedent(
    """
    import json, sys, torch
    from torch import nn
    import fairseq_plugins.optim
    cls = getattr(fairseq_plugins.optim, sys.argv[1])
    impl, saved_size, loaded_size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    src = nn.Linear(saved_size, saved_size)
    opt = cls(src.named_parameters(), impl=impl)
    src(torch.randn(3, saved_size)).sum().backward(); opt.step()
    dst = nn.Linear(loaded_size, loaded_size)
    before = [p.detach().clone() for p in dst.parameters()]
    fresh = cls(dst.named_parameters(), impl=impl)
    try:
        fresh.load_state_dict(opt.state_dict())
    except ValueError as exc:
        error = str(exc)
    else:
        error = None
    dst(torch.randn(3, loaded_size)).sum().backward()
    fresh.step()  # whatever was loaded, the step must not corrupt memory
    print(json.dumps({"error": error, "state_after_refusal": len(fresh.state) if error else None}))
    """
)


@pytest.mark.parametrize("info, impl", cases(impls="kernels"))
@pytest.mark.parametrize("saved, loaded", [(2, 512), (512, 2)], ids=["smaller-state", "larger-state"])
def test_a_state_saved_for_other_tensors_is_refused_by_name(info, impl, saved, loaded):
    proc = subprocess.run(
        [sys.executable, "-c", _MISFIT, info.name, impl, str(saved), str(loaded)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode} (a negative code is a signal):\n{proc.stderr[-3000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    error = result["error"]
    assert error is not None, "a misfitting state was loaded without a word"
    assert "'weight'" in error, error  # the parameter's name
    assert f"({saved}, {saved})" in error and f"({loaded}, {loaded})" in error, error  # both shapes
    assert "--reset-optimizer" in error, error  # the remedy
    assert result["state_after_refusal"] == 1 + 1, "the refused load changed the state (expected the 2 fresh entries)"


@pytest.mark.parametrize("info, impl", cases(impls="kernels"))
def test_a_state_tensor_of_another_size_is_refused_before_the_step_moves_anything(info, impl):
    """State edited in place after loading (or handed to the functional API) meets the step's own check."""
    model = nn.Linear(8, 8)
    opt = info.optim_cls(model.named_parameters(), impl=impl)
    params = list(model.parameters())
    _train(opt, params, steps=1)
    opt.state[model.weight]["exp_avg"] = torch.zeros(2, 2)
    before = [p.detach().clone() for p in params], _snapshot(opt)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 'weight' is \(2, 2\).*must be shape \(8, 8\)"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before[0], params, strict=True))
    for p, state in opt.state.items():
        for key, value in before[1][id(p)].items():
            assert torch.equal(value, state[key]) or key == "exp_avg", key


_GOOD = dict(lr=1e-3, beta1=0.9, beta2=0.99, beta3=0.75, eps=1e-8, weight_decay=0.0, bias_correction=True,
             strength=1.0)  # fmt: skip


@pytest.mark.parametrize("info, bad, impl", cases(errors="lists", impls="kernels"))
def test_the_functional_api_checks_every_list(info, bad, impl):
    p, g = torch.zeros(16), torch.ones(16)
    step = torch.tensor(0.0)
    with pytest.raises(ValueError, match="SAGE"):
        info.functional(*bad.make(p, g, step), impl=impl, **_GOOD)
    assert float(step) == 0.0 and torch.equal(p, torch.zeros(16)), bad.desc


@pytest.mark.parametrize("info", cases())
@pytest.mark.parametrize("missing", ["eps", "beta3"])
def test_the_functional_api_names_a_missing_option(info, missing):
    """The scalar options are keywords of one list (``StepOptions``): a forgotten one is named, nothing moves."""
    p, step = torch.zeros(16), torch.tensor(0.0)
    lists = ([p], [torch.ones(16)], [torch.zeros(16)], [torch.zeros(16)], [torch.zeros(16)], [step])
    options = {k: v for k, v in _GOOD.items() if k != missing}
    with pytest.raises(TypeError, match=missing):
        info.functional(*lists, **options)
    with pytest.raises(TypeError, match="typo"):
        info.functional(*lists, **_GOOD, typo=1.0)
    assert float(step) == 0.0 and torch.equal(p, torch.zeros(16))


def test_the_fused_kernel_guards_its_raw_pointers():
    if not _fused_cpu.available():
        pytest.skip(f"fused kernel unavailable: {_fused_cpu.error()}")
    p, g = torch.zeros(1 << 16), torch.ones(1 << 16)
    kw = dict(adamax=False, step_sizes=[1e-3], bc3s=[1.0], options=StepOptions(**_GOOD))
    with pytest.raises(ValueError, match="state or gradient for a parameter of shape"):
        _fused_cpu.step([p], [g], [torch.zeros(4)], [torch.zeros(1 << 16)], None, **kw)
    with pytest.raises(ValueError, match="not eligible"):
        _fused_cpu.step([p], [g], [torch.zeros(1 << 16)[::2]], [torch.zeros(1 << 15)], None, **kw)
    with pytest.raises(ValueError, match="lists of"):
        _fused_cpu.step([p], [g], [torch.zeros(1 << 16)], [], None, **kw)
    with pytest.raises(TypeError):  # the per-tensor scalars are keywords too: no positional step sizes
        _fused_cpu.step([p], [g], [torch.zeros(1 << 16)], [torch.zeros(1 << 16)], None, [1e-3], [1.0], **kw)


# ---------------------------------------------------------------- selection changes (plain PyTorch)


def _block():
    torch.manual_seed(0)
    return nn.ModuleDict({"fc1": nn.Linear(4, 4), "fc2": nn.Linear(4, 4)})  # same shapes: position cannot tell


@pytest.mark.parametrize(
    "before, after", [(r"regex:fc1\.", r"regex:fc2\."), ("all", "none"), ("none", "all"), ("attn_ffn", "all")]
)
def test_a_state_of_another_selection_is_refused_and_nothing_loaded(before, after):
    block = _block()
    params = list(block.parameters())
    opt = AdamSAGE(block.named_parameters(), sage_params=before)
    _train(opt, params)
    fresh = AdamSAGE(block.named_parameters(), sage_params=after)
    with pytest.raises(SelectionChangedError, match=r"sage_params=.*reset-optimizer") as err:
        fresh.load_state_dict(opt.state_dict())
    assert repr(before) in str(err.value) and repr(after) in str(err.value)
    assert not fresh.state and [g["sage_params"] for g in fresh.param_groups] == [after] * len(fresh.param_groups)


def test_an_old_state_without_the_selection_is_checked_by_its_layout():
    block = _block()
    opt = AdamSAGE(block.named_parameters(), sage_params=r"regex:fc1\.")
    _train(opt, list(block.parameters()))
    state = opt.state_dict()
    for group in state["param_groups"]:
        del group["sage_params"]  # as saved before the key existed
    same = AdamSAGE(block.named_parameters(), sage_params=r"regex:fc1\.")
    same.load_state_dict(state)
    assert len(same.state) == 4
    flipped = AdamSAGE(block.named_parameters(), sage_params=r"regex:fc2\.")  # same layout, same shapes
    flipped.load_state_dict(state)  # nothing in an old state tells these apart (documented); new states carry it
    with pytest.raises(ValueError, match=r"parameter 'fc2.weight'.*exp_avg has shape \(4,\)"):
        AdamSAGE(block.named_parameters(), sage_params="regex:fc1.weight|fc2.weight").load_state_dict(state)
    with pytest.raises(SelectionChangedError):
        AdamSAGE(block.named_parameters(), sage_params="all").load_state_dict(state)


def test_load_keeps_the_caller_dict_and_fp32_state_of_half_parameters():
    p = torch.randn(8).half()
    opt = AdamSAGE([p], lr=1e-3)
    _train(opt, [p])
    saved = opt.state_dict()
    groups_before = [dict(g) for g in saved["param_groups"]]
    fresh = AdamSAGE([p], lr=1e-3)
    fresh.load_state_dict(saved)
    assert saved["param_groups"] == groups_before
    assert {v.dtype for k, v in fresh.state[p].items() if k != "step"} == {torch.float32}
    _train(fresh, [p], steps=1)  # torch would have cast the moments to fp16, which the kernels refuse


# ---------------------------------------------------------------- parameters and options


@pytest.mark.parametrize("info", cases())
def test_complex_and_integer_parameters_are_refused_at_construction(info):
    cls = info.optim_cls
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    with pytest.raises(ValueError, match=r"complex parameters: parameter 'z'.*view_as_real"):
        cls([("z", z)])
    with pytest.raises(ValueError, match=r"complex parameters"):
        cls([torch.zeros(3), z])
    with pytest.raises(ValueError, match=r"complex parameters"):
        opt = cls([torch.zeros(3)])
        opt.add_param_group({"params": [z]})
    with pytest.raises(ValueError, match=r"floating-point"):
        cls([torch.zeros(3, dtype=torch.int64)])


@pytest.mark.parametrize("info, bad", cases(errors="group"))
def test_bad_options_of_an_added_group_are_refused(info, bad):
    opt = info.optim_cls([torch.zeros(2)])
    with pytest.raises(bad.error_type) as err:
        opt.add_param_group({"params": [torch.zeros(3)], **bad.kwargs})
    message = str(err.value)
    assert message.startswith(bad.option) and bad.shown in message, message
    assert len(opt.param_groups) == 1


# ---------------------------------------------------------------- a selection that trains nothing


def test_a_selection_whose_tensors_get_no_gradient_warns_once():
    block = _block()
    opt = AdamSAGE(block.named_parameters(), sage_params=r"regex:fc2\.")
    x = torch.randn(2, 4)
    with pytest.warns(RuntimeWarning, match=r"regex:fc2.*none of them received a gradient"):
        block["fc1"](x).sum().backward()  # fc2 unused
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()


def test_a_selection_of_frozen_tensors_is_refused():
    block = _block()
    block["fc2"].requires_grad_(False)
    with pytest.raises(ValueError, match=r"only tensors that do not require a gradient"):
        AdamSAGE(block.named_parameters(), sage_params=r"regex:fc2\.")


def test_a_used_selection_does_not_warn():
    block = _block()
    opt = AdamSAGE(block.named_parameters(), sage_params=r"regex:fc2\.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block["fc2"](block["fc1"](torch.randn(2, 4))).sum().backward()
        opt.step()


def test_a_selection_beside_groups_that_set_sage_themselves_is_refused():
    block = _block()
    groups = [{"params": list(block[n].parameters()), "sage": n == "fc1"} for n in ("fc1", "fc2")]
    with pytest.raises(ValueError, match=r"every parameter group sets sage=True/False itself"):
        AdamSAGE(groups, sage_params="attn_ffn")
    assert [(len(g["params"]), g["sage"]) for g in AdamSAGE(groups).param_groups] == [(2, True), (2, False)]


class _CudaTensor:
    """What ``resolve_impl`` reads of a parameter on a CUDA device (no GPU here)."""

    is_cuda = True
    device = torch.device("cuda", 0)


def test_auto_on_cuda_picks_triton_else_foreach_with_one_warning(monkeypatch):
    """``auto`` on CUDA: the Triton kernel (measured faster than foreach on an H200, BENCHMARKS.md), and foreach, with
    one warning that says why, where Triton cannot run: not installed, or a GPU older than compute capability 7.0."""
    import dataclasses

    from fairseq_plugins.optim import _functional as F

    def triton_unavailable(reason):
        monkeypatch.setitem(F.IMPLS, "triton", dataclasses.replace(F.IMPLS["triton"], unavailable=lambda: reason))

    params = [_CudaTensor(), _CudaTensor()]
    monkeypatch.setattr(F, "_warned_cuda_fallback", False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100")
    triton_unavailable(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert F.resolve_impl("auto", params) == "triton"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    with pytest.warns(RuntimeWarning, match=r"compute capability 7\.0 or newer, Tesla P100 has 6\.0.*foreach"):
        assert F.resolve_impl("auto", params) == "foreach"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        assert F.resolve_impl("auto", params) == "foreach"
    monkeypatch.setattr(F, "_warned_cuda_fallback", False)
    triton_unavailable("Triton is not installed (No module named 'triton')")
    with pytest.warns(RuntimeWarning, match="Triton is not installed.*using the foreach kernel"):
        assert F.resolve_impl("auto", params) == "foreach"
    assert F.resolve_impl("auto", [_CudaTensor(), torch.zeros(3)]) != "triton"  # not every tensor on CUDA
    with pytest.raises(RuntimeError, match="impl='triton' is unavailable: Triton is not installed"):
        F.resolve_impl("triton", params)  # asked for by name: refused, never swapped
