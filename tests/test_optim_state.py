"""What becomes of an optimizer and its state (docs/optimizer-state.md): a copy (``copy.deepcopy``, pickle) steps as the
original; states of other optimizers convert or are refused at load, naming the key or option and the remedy, with the
optimizer and the given dict untouched; ``impl`` stays the constructor's; fp16 parameters keep their fp32 moments.
Every optimizer and impl of tests/optim_infos.py (the Triton impl: tests/test_fused_triton.py)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from fairseq_plugins.optim import AdamSAGE
from tests.optim_infos import ADAM, NEGLIGIBLE_EPS, cases

COPIERS = {"deepcopy": copy.deepcopy, "pickle": lambda opt: pickle.loads(pickle.dumps(opt))}


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))


def _set_grads(params, step, seed=0):
    gen = torch.Generator().manual_seed(seed * 1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def _deep_equal(a, b) -> bool:
    """Equal dicts, lists and tensors (same dtype and values), recursively."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.equal(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_deep_equal, a, b))
    return type(a) is type(b) and a == b


# ---------------------------------------------------------------- copies


@pytest.mark.parametrize("copier", COPIERS)
@pytest.mark.parametrize("info, impl", cases(impls="all"))
def test_a_copy_steps_identically(info, impl, copier):
    """A copy made after some steps continues exactly as the original: parameters and every state tensor. A selection
    by name (two groups, SAGE and plain) and the once-only warning's flag travel with it."""
    model = _model()
    opt = info.optim_cls(model.named_parameters(), lr=1e-2, weight_decay=0.01, sage_params=r"regex:^0\.", impl=impl)
    for t in range(3):
        _set_grads(model.parameters(), t)
        opt.step()
    twin = COPIERS[copier](opt)
    assert [g["sage"] for g in twin.param_groups] == [True, False]
    for t in range(3, 6):
        for params in (_params(opt), _params(twin)):
            _set_grads(params, t)
        opt.step()
        twin.step()
    for p, q in zip(_params(opt), _params(twin), strict=True):
        assert p is not q and torch.equal(p, q)
        assert opt.state[p].keys() == twin.state[q].keys()
        for key, value in opt.state[p].items():
            assert torch.equal(value, twin.state[q][key]), key
    assert twin._warned_no_grad  # the first step's check is not repeated by the copy


def test_a_copy_keeps_the_names_fairseq_gave():
    """fairseq hands over bare tensors and names them (``name_parameters``); a copy's tensors are new objects and still
    named in its errors."""
    model = _model()
    opt = AdamSAGE(model.parameters())
    opt.name_parameters(model.parameters(), [n for n, _ in model.named_parameters()])
    twin = copy.deepcopy(opt)
    params = _params(twin)
    _set_grads(params, 0)
    params[2].grad = params[2].grad.to_sparse()
    with pytest.raises(RuntimeError, match=r"parameter '2.weight' \(group 0, index 2\) has a torch.sparse_coo"):
        twin.step()


# ---------------------------------------------------------------- states of other optimizers


@pytest.mark.parametrize("info, saved", cases(saved="refused"))
def test_a_state_that_does_not_convert_is_refused_at_load(info, saved):
    """Refused in load_state_dict, not at the first step: the error names the key or option and the remedy; the
    optimizer, its parameters and the given dict are as they were."""
    model = _model()
    params = list(model.parameters())
    opt = info.optim_cls(params, lr=1e-2)
    _set_grads(params, 0)
    opt.step()
    state_dict = saved.make(params)
    given, before, values = copy.deepcopy(state_dict), copy.deepcopy(opt.state_dict()), [p.clone() for p in params]
    with pytest.raises(ValueError, match=saved.refused) as err:
        opt.load_state_dict(state_dict)
    message = str(err.value)
    assert message.startswith(f"{info.name}.load_state_dict"), message
    assert "start the optimizer afresh (fairseq-train: --reset-optimizer)" in message, message
    assert _deep_equal(state_dict, given), "the refused load changed the given state dict"
    assert _deep_equal(opt.state_dict(), before), "the refused load changed the optimizer"
    assert all(torch.equal(p, v) for p, v in zip(params, values, strict=True))


@pytest.mark.parametrize("info, saved, impl", cases(saved="converted", impls="all"))
def test_a_state_that_converts_loads_and_steps(info, saved, impl):
    """What a converted state becomes: the moments and the step count as saved (an int step as a float tensor), the
    sensitivity average started at zero, the saved lr, betas, eps and weight decay; SAGE's own options and ``impl`` the
    constructor's; torch's options that SAGE has no use for are gone (docs/optimizer-state.md)."""
    params = list(_model().parameters())
    state_dict = saved.make(params)
    opt = info.optim_cls(params, lr=0.5, betas=(0.5, 0.5), eps=0.5, beta3=0.3, sage_strength=0.7, impl=impl)
    opt.load_state_dict(state_dict)
    for saved_group, group in zip(state_dict["param_groups"], opt.param_groups, strict=True):
        assert set(group) == {"params", "lr", "betas", "eps", "weight_decay", "beta3", "bias_correction",
                              "sage_strength", "sage", "sage_params", "impl", "capturable"}  # fmt: skip
        for key in ("lr", "betas", "eps", "weight_decay"):
            assert group[key] == saved_group[key], key
        if "beta3" not in saved_group:  # another optimizer's: SAGE's options are the constructor's
            assert (group["beta3"], group["sage_strength"]) == (0.3, 0.7)
        assert group["impl"] == impl and group["capturable"] is False  # the constructor's (torch's is dropped)
    for i, p in enumerate(params):
        state, saved_entry = opt.state[p], state_dict["state"][i]
        assert set(state) == {"step", *info.state_keys}
        assert state["step"].dtype == torch.float32 and float(state["step"]) == float(saved_entry["step"]) == 1
        for key in ("exp_avg", info.second_moment):
            assert torch.equal(state[key], saved_entry[key]), key
        if "exp_avg_sens" not in saved_entry:
            assert not state["exp_avg_sens"].any()
    _set_grads(params, 1)
    opt.step()
    assert all(float(opt.state[p]["step"]) == 2 for p in params)


@pytest.mark.parametrize("torch_optimizer", [torch.optim.AdamW, torch.optim.Adam])
@pytest.mark.parametrize("info, impl", [case for case in cases(impls="all") if case.values[0] is ADAM])
def test_a_torch_adam_state_continues_as_torch_at_strength_0(info, impl, torch_optimizer):
    """AdamW's state converts to AdamSAGE, which at SAGE strength 0 continues as AdamW would (Adam without weight
    decay is the same update). eps sits elsewhere in torch (after the bias correction): a negligible one here."""
    decay = 0.1 if torch_optimizer is torch.optim.AdamW else 0.0
    theirs = [p.detach().double() for p in _model().parameters()]
    torch_opt = torch_optimizer(theirs, lr=1e-2, betas=(0.8, 0.9), eps=NEGLIGIBLE_EPS, weight_decay=decay)
    for t in range(4):
        _set_grads(theirs, t)
        torch_opt.step()
    ours = [p.clone() for p in theirs]
    sage = info.optim_cls(ours, sage_strength=0.0, impl=impl)
    sage.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # as from a file: torch's load keeps the tensors
    for t in range(4, 10):
        _set_grads(theirs, t)
        _set_grads(ours, t)
        torch_opt.step()
        sage.step()
    for p, q in zip(ours, theirs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sage.state[p][key], torch_opt.state[q][key], rtol=1e-12, atol=1e-16)
        assert float(sage.state[p]["step"]) == float(torch_opt.state[q]["step"]) == 10
        assert sage.state[p]["exp_avg_sens"].abs().sum() > 0  # the sensitivity average runs, ready for strength > 0


# ---------------------------------------------------------------- what load_state_dict keeps of this optimizer


@pytest.mark.parametrize("info, impl", cases(impls="all"))
def test_the_constructor_impl_wins_over_the_saved_one(info, impl):
    """impl describes the machine: a state saved on a GPU with impl='triton' loads and steps here with the impl the
    constructor was given (saved options otherwise follow torch: they are restored)."""
    params = list(_model().parameters())
    gpu_state = info.optim_cls(params, lr=1e-2, impl="single_tensor")
    _set_grads(params, 0)
    gpu_state.step()
    state_dict = gpu_state.state_dict()
    for group in state_dict["param_groups"]:
        group["impl"], group["beta3"] = "triton", 0.5
    opt = info.optim_cls(params, lr=1e-3, impl=impl)
    opt.load_state_dict(state_dict)
    assert [(g["impl"], g["beta3"], g["lr"]) for g in opt.param_groups] == [(impl, 0.5, 1e-2)]
    _set_grads(params, 1)
    opt.step()
    assert opt.state_dict()["param_groups"][0]["impl"] == impl


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("info", cases())
def test_low_precision_parameters_keep_their_fp32_state_through_a_load(info, dtype):
    """torch casts loaded state to the parameter's dtype; in fp16 a second moment of 1e-12 is 0, and the next step
    would divide by eps alone. The loaded state is the saved fp32 one, bit for bit."""
    p = (torch.randn(64, generator=torch.Generator().manual_seed(0)) * 1e-3).to(dtype)
    opt = info.optim_cls([p], lr=1e-3)
    p.grad = (torch.randn(64, generator=torch.Generator().manual_seed(1)) * 1e-6).to(dtype)
    opt.step()
    fresh = info.optim_cls([p], lr=1e-3)
    fresh.load_state_dict(opt.state_dict())
    for key in info.state_keys:
        assert fresh.state[p][key].dtype == torch.float32 and torch.equal(fresh.state[p][key], opt.state[p][key]), key


# ---------------------------------------------------------------- options given as torch's optimizers take them


@pytest.mark.parametrize("info, impl", cases(impls="all"))
def test_lr_as_a_tensor_or_numpy_scalar_steps_as_its_float(info, impl):
    """As torch's optimizers: a one-element tensor lr is kept (changing it in place changes the next step), a numpy
    scalar is a float (a saved state then needs no numpy); both step exactly as the float they hold."""
    np = pytest.importorskip("numpy")
    runs = {}
    for kind, lr in {"float": float(np.float32(1e-2)), "tensor": torch.tensor(1e-2), "numpy": np.float32(1e-2)}.items():
        params = list(_model().parameters())
        opt = info.optim_cls(params, lr=lr, weight_decay=0.01, impl=impl)
        for t in range(3):
            _set_grads(params, t)
            opt.step()
        runs[kind] = params, opt
    for kind in ("tensor", "numpy"):
        for p, q in zip(runs["float"][0], runs[kind][0], strict=True):
            assert torch.equal(p, q), kind
    assert type(runs["numpy"][1].param_groups[0]["lr"]) is float
    params, opt = runs["tensor"]
    opt.param_groups[0]["lr"].fill_(0.0)
    before = [p.clone() for p in params]
    _set_grads(params, 3)
    opt.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))  # lr 0, no weight decay step either


# ---------------------------------------------------------------- gradients SAGE refuses or carries


@pytest.mark.parametrize("info", cases())
def test_a_sparse_gradient_is_refused_by_name_before_anything_moves(info):
    model = nn.ModuleDict({"dense": nn.Linear(3, 3), "emb": nn.Embedding(5, 3, sparse=True)})
    named = list(model.named_parameters())
    opt = info.optim_cls([{"params": named[:2]}, {"params": named[2:]}])  # dense, then the embedding
    model["dense"](model["emb"](torch.tensor([1, 2]))).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"sparse gradients: parameter 'emb.weight' \(group 1, index 0\)"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert not opt.state, "the refused step created state"
