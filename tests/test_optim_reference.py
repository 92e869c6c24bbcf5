"""The fast paths against the line-by-line reference, on parameters and on every state tensor: every optimizer x
option set x impl of the table in tests/optim_infos.py."""

from __future__ import annotations

import pytest
import torch

from fairseq_plugins.optim import AdamSAGE
from tests.optim_infos import LOW_PRECISION, NEGLIGIBLE_EPS, OPTIM_INPUTS, available_impls, cases


def _make_params(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 8, generator=g, dtype=torch.float64)
    return [
        torch.randn(7, 5, generator=g, dtype=torch.float64).to(dtype),
        torch.zeros(5, dtype=dtype),  # zero-initialised, like fairseq's biases
        base.t().contiguous().t().to(dtype)[:, ::2],  # non-contiguous view layout
        torch.randn(3, 4, 2, generator=g, dtype=torch.float64).to(dtype).transpose(0, 2),  # non-contiguous
        torch.randn(1, generator=g, dtype=torch.float64).to(dtype),
        torch.randn(4, generator=g, dtype=torch.float64).to(dtype),  # never gets a gradient
    ]


def _grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    grads = []
    for i, p in enumerate(params):
        if i == 5:
            grads.append(None)  # missing gradient: no update, no state
        elif i == 4 and step % 3 == 0:
            grads.append(None)  # intermittently missing: its step count falls behind the others
        else:
            gr = torch.randn(p.shape, generator=g, dtype=torch.float64) * (0.1 + step % 4)
            if i == 0 and step % 5 == 0:
                gr[0] = 0.0  # some exactly-zero gradient entries
            grads.append(gr.to(p.dtype))
    return grads


def _run(opt_cls, opt_input, params, steps, **kw):
    opt = opt_cls(opt_input.groups(params), **{**opt_input.kwargs, **kw})
    for t in range(1, steps + 1):
        for p, gr in zip(params, _grads(params, t), strict=True):
            p.grad = None if gr is None else gr.clone()
        opt.step()
    return opt


@pytest.mark.parametrize("info, opt_input, dtype, impl", cases(dtypes=(torch.float64,), impls="all"))
def test_fast_path_matches_reference_float64(info, opt_input, dtype, impl):
    fast_params, ref_params = _make_params(dtype), _make_params(dtype)
    fast = _run(info.optim_cls, opt_input, fast_params, 25, impl=impl)
    ref = _run(info.reference_cls, opt_input, ref_params, 25)
    for i, (p, q) in enumerate(zip(fast_params, ref_params, strict=True)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=f"param {i}")
        if i == 5:
            assert not fast.state[p] and not ref.state[q], "a tensor without gradient must get no state"
            continue
        fs, rs = fast.state[p], ref.state[q]
        assert float(fs["step"]) == rs["step"]
        for key in info.state_keys:
            if key == "exp_avg_sens" and i in opt_input.unselected:
                assert key not in fs, "a tensor without SAGE must get no sensitivity state"
                continue
            assert fs[key].dtype == torch.float64
            torch.testing.assert_close(fs[key], rs[key], rtol=1e-10, atol=1e-14, msg=f"{key} of param {i}")
    assert float(fast.state[fast_params[4]]["step"]) < 25  # the intermittent gradient really skipped steps


@pytest.mark.parametrize("info, opt_input, dtype", cases(dtypes=(torch.float32,)))
def test_fast_paths_agree_float32(info, opt_input, dtype):
    results = []
    for impl in available_impls(info):
        params = _make_params(dtype)
        _run(info.optim_cls, opt_input, params, 20, impl=impl)
        results.append(params)
    for other in results[1:]:
        for p, q in zip(results[0], other, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("info, opt_input, dtype, impl", cases(dtypes=LOW_PRECISION, impls="all"))
def test_low_precision_params_keep_fp32_state(info, opt_input, dtype, impl):
    low, ref_params = _make_params(dtype), _make_params(dtype)  # both round the parameter to `dtype` each step
    opt = _run(info.optim_cls, opt_input, low, 20, impl=impl)
    _run(info.reference_cls, opt_input, ref_params, 20)
    for p, q in zip(low, ref_params, strict=True):
        assert p.dtype == q.dtype == dtype
        ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10  # fp32 vs fp64 state may flip a final rounding
        torch.testing.assert_close(p.double(), q.double(), rtol=ulp, atol=1e-3)
        for key in info.state_keys:
            if opt.state[p]:
                assert opt.state[p][key].dtype == torch.float32


def test_unselected_group_is_plain_adamw():
    """A group with sage=False takes exactly torch's AdamW update."""
    params = _make_params(torch.float64)[:2]
    ours = [p.clone() for p in params]
    theirs = [p.clone() for p in params]
    # torch puts eps after the bias correction, fairseq (and we) before it; an eps far below sqrt(v)'s last bit (v is
    # about 0.01 to 10 here) makes the place irrelevant (eps must be > 0: at 0 a zero entry gets 0/0)
    opt = AdamSAGE([{"params": ours, "sage": False}], lr=1e-2, weight_decay=0.1, eps=NEGLIGIBLE_EPS)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, eps=NEGLIGIBLE_EPS)
    for t in range(1, 11):
        for a, b, gr in zip(ours, theirs, _grads(ours, t), strict=True):
            a.grad, b.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert "exp_avg_sens" not in opt.state[a]


@pytest.mark.parametrize("info, impl", cases(impls="all"))
def test_a_nan_gradient_gives_what_the_reference_gives(info, impl):
    """NaN gradient entries in a SAGE tensor and in a plain one: every impl ends where the float64 reference ends,
    entry by entry, NaN included (Adamax's infinity norm keeps a NaN, as torch.maximum, instead of recovering)."""
    opt_input = next(x for x in OPTIM_INPUTS if x.unselected)
    fast_params, ref_params = _make_params(), _make_params()
    fast = info.optim_cls(opt_input.groups(fast_params), **opt_input.kwargs, impl=impl)
    ref = info.reference_cls(opt_input.groups(ref_params), **opt_input.kwargs)
    for t in range(1, 7):
        grads = _grads(fast_params, t)
        if t == 2:
            grads[0][1, 1] = grads[3][0, 1, 0] = float("nan")  # parameter 3 is in the unselected group
        for params in (fast_params, ref_params):
            for p, gr in zip(params, grads, strict=True):
                p.grad = None if gr is None else gr.clone()
        fast.step()
        ref.step()
    for i, (p, q) in enumerate(zip(fast_params, ref_params, strict=True)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, equal_nan=True, msg=f"param {i}")
        for key in info.state_keys if fast.state[p] else ():
            if key in fast.state[p]:
                torch.testing.assert_close(fast.state[p][key], ref.state[q][key], rtol=1e-10, atol=1e-14,
                                           equal_nan=True, msg=f"{key} of param {i}")  # fmt: skip
    assert fast.state[fast_params[0]][info.second_moment].isnan().sum() == 1  # the NaN entry only
    assert fast_params[3].isnan().sum() == 1
