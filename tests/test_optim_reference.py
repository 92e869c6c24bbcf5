"""The fast paths against the line-by-line reference, on parameters and on every state tensor."""

from __future__ import annotations

import pytest
import torch

from fairseq_plugins.optim import AdamaxSAGE, AdamSAGE, ReferenceAdamaxSAGE, ReferenceAdamSAGE, _fused_cpu

PAIRS = [(AdamSAGE, ReferenceAdamSAGE, "exp_avg_sq"), (AdamaxSAGE, ReferenceAdamaxSAGE, "exp_inf")]
_NO_FUSED = pytest.mark.skipif(not _fused_cpu.available(), reason=f"no fused kernel here: {_fused_cpu.error()}")
IMPLS = ["single_tensor", "foreach", pytest.param("fused", marks=_NO_FUSED), "auto"]  # auto: fused, or its fallback
IMPL_NAMES = ["single_tensor", "foreach", "auto"] + (["fused"] if _fused_cpu.available() else [])


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


def _run(opt_cls, params, steps, **kw):
    opt = opt_cls(params, **kw)
    for t in range(1, steps + 1):
        for p, gr in zip(params, _grads(params, t), strict=True):
            p.grad = None if gr is None else gr.clone()
        opt.step()
    return opt


CONFIGS = [
    dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.1, beta3=0.8, bias_correction=True),
    dict(lr=3e-2, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.0, beta3=0.6, bias_correction=False),
    dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, beta3=0.9, bias_correction=True, sage_strength=0.3),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("config", range(len(CONFIGS)))
@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_fast_path_matches_reference_float64(pair, config, impl):
    fast_cls, ref_cls, second = PAIRS[pair]
    kw = CONFIGS[config]
    fast_params, ref_params = _make_params(), _make_params()
    fast = _run(fast_cls, fast_params, 25, impl=impl, **kw)
    ref = _run(ref_cls, ref_params, 25, **kw)
    for i, (p, q) in enumerate(zip(fast_params, ref_params, strict=True)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12, msg=f"param {i}")
        if i == 5:
            assert not fast.state[p] and not ref.state[q], "a tensor without gradient must get no state"
            continue
        fs, rs = fast.state[p], ref.state[q]
        assert float(fs["step"]) == rs["step"]
        for key in ("exp_avg", second, "exp_avg_sens"):
            assert fs[key].dtype == torch.float64
            torch.testing.assert_close(fs[key], rs[key], rtol=1e-10, atol=1e-14, msg=f"{key} of param {i}")
    assert float(fast.state[fast_params[4]]["step"]) < 25  # the intermittent gradient really skipped steps


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_fast_paths_agree_float32(pair):
    fast_cls, _, _ = PAIRS[pair]
    results = []
    for impl in IMPL_NAMES:
        params = _make_params(torch.float32)
        _run(fast_cls, params, 20, impl=impl, **CONFIGS[0])
        results.append(params)
    for other in results[1:]:
        for p, q in zip(results[0], other, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_low_precision_params_keep_fp32_state(pair, dtype, impl):
    fast_cls, ref_cls, second = PAIRS[pair]
    kw = dict(CONFIGS[0], eps=1e-6)  # eps**2 = 1e-12 underflows in fp16: the state must be fp32
    low, ref_params = _make_params(dtype), _make_params(dtype)  # both round the parameter to `dtype` each step
    opt = _run(fast_cls, low, 20, impl=impl, **kw)
    _run(ref_cls, ref_params, 20, **kw)
    for p, q in zip(low, ref_params, strict=True):
        assert p.dtype == q.dtype == dtype
        ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10  # fp32 vs fp64 state may flip a final rounding
        torch.testing.assert_close(p.double(), q.double(), rtol=ulp, atol=1e-3)
        for key in ("exp_avg", second, "exp_avg_sens"):
            if opt.state[p]:
                assert opt.state[p][key].dtype == torch.float32


def test_unselected_group_is_plain_adamw():
    """A group with sage=False takes exactly torch's AdamW update."""
    params = _make_params(torch.float64)[:2]
    ours = [p.clone() for p in params]
    theirs = [p.clone() for p in params]
    # eps=0: torch puts eps after the bias correction, fairseq (and we) before it; without eps the two are equal
    opt = AdamSAGE([{"params": ours, "sage": False}], lr=1e-2, weight_decay=0.1, eps=0.0)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, eps=0.0)
    for t in range(1, 11):
        for a, b, gr in zip(ours, theirs, _grads(ours, t), strict=True):
            a.grad, b.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert "exp_avg_sens" not in opt.state[a]
