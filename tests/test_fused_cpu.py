"""The fused CPU kernel beyond test_optim_reference.py: tensors large enough for several threads and chunks, mixed
dtypes in one group, tensors it must hand to the single-tensor path, and the fallback when it cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch

from fairseq_plugins.optim import AdamSAGE, _fused_cpu
from fairseq_plugins.optim import _functional as F
from tests.optim_infos import FUSED_INPUT, FUSED_INPUT_NO_BIAS_CORRECTION, cases

pytestmark = pytest.mark.skipif(not _fused_cpu.available(), reason=f"fused kernel unavailable: {_fused_cpu.error()}")


def _big_params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    # 138k entries: more than 4 chunks of 32k, so the threaded path runs; chunk boundaries fall inside tensors
    shapes = [(300, 301), (40001,), (3,), (100, 77)]
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]
    params[2].zero_()
    return params


def _run(opt, params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        for i, p in enumerate(params):
            grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if i == 3 and t % 2:
                p.grad = None  # this tensor's step count falls behind
            else:
                p.grad = grad.to(p.dtype)
        opt.step()


@pytest.mark.parametrize("info, opt_input, dtype", cases(dtypes=(torch.float64,)))
def test_threaded_fused_matches_reference_float64(info, opt_input, dtype):
    a, b = _big_params(dtype), _big_params(dtype)
    fast = info.optim_cls(opt_input.groups(a), impl="fused", **opt_input.kwargs)
    ref = info.reference_cls(opt_input.groups(b), **opt_input.kwargs)
    _run(fast, a, 6)
    _run(ref, b, 6)
    for i, (p, q) in enumerate(zip(a, b, strict=True)):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        for key in info.state_keys:
            if key == "exp_avg_sens" and i in opt_input.unselected:
                assert key not in fast.state[p]
                continue
            torch.testing.assert_close(fast.state[p][key], ref.state[q][key], rtol=1e-10, atol=1e-14)
    assert float(fast.state[a[3]]["step"]) == 3


@pytest.mark.parametrize("opt_input", [FUSED_INPUT, FUSED_INPUT_NO_BIAS_CORRECTION], ids=lambda i: i.desc)
@pytest.mark.parametrize("info", cases())
def test_mixed_dtypes_and_layouts_in_one_group(info, opt_input):
    """fp32, bf16, fp16 and non-contiguous tensors in one group: each dtype in its own kernel call, the
    non-contiguous ones through the single-tensor path; all as the single-tensor kernel computes them."""

    def make():
        g = torch.Generator().manual_seed(3)
        base = torch.randn(120, 160, generator=g)
        return [
            base[:, :80].clone(),
            base[:, 80:].clone().to(torch.bfloat16),
            base[:40].clone().to(torch.float16),
            base.clone().t(),  # non-contiguous: fallback
            torch.zeros(7),
        ]

    results = []
    for impl in ("fused", "single_tensor"):
        params = make()
        opt = info.optim_cls(params, impl=impl, **opt_input.kwargs)
        g = torch.Generator().manual_seed(4)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
            opt.step()
        results.append((params, opt))
    (fused, fopt), (single, sopt) = results
    for p, q in zip(fused, single, strict=True):
        assert p.dtype == q.dtype
        tol = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[p.dtype]
        torch.testing.assert_close(p.float(), q.float(), rtol=tol, atol=1e-5)
        for key in info.state_keys:
            assert fopt.state[p][key].dtype == torch.float32
            # the state of a low-precision tensor sees its rounded parameter: one flipped rounding shows there too
            torch.testing.assert_close(fopt.state[p][key], sopt.state[q][key], rtol=max(tol, 1e-4), atol=1e-6)


def test_non_contiguous_gradient_takes_the_single_tensor_path():
    p = torch.randn(64, 32)
    assert not _fused_cpu.eligible(p, torch.randn(32, 64).t(), torch.zeros(64, 32), torch.zeros(64, 32))
    assert _fused_cpu.eligible(p, torch.randn(64, 32), torch.zeros(64, 32), torch.zeros(64, 32))
    assert not _fused_cpu.eligible(p, torch.randn(64, 32, dtype=torch.float64))


def test_auto_picks_fused_on_cpu():
    assert F.resolve_impl("auto", [torch.zeros(3)]) == "fused"
    assert F.resolve_impl("single_tensor", [torch.zeros(3)]) == "single_tensor"


def test_fallback_when_the_kernel_cannot_be_built(monkeypatch):
    monkeypatch.setattr(_fused_cpu, "_lib", None)
    monkeypatch.setattr(_fused_cpu, "_error", "RuntimeError: no C++ compiler found (set CXX)")
    monkeypatch.setattr(F, "_warned_fallback", False)
    params = [torch.randn(5, 3)]
    opt = AdamSAGE(params, impl="auto")
    params[0].grad = torch.randn(5, 3)
    with pytest.warns(RuntimeWarning, match="fused CPU kernel is unavailable"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        opt.step()
    with pytest.raises(RuntimeError, match="impl='fused' is unavailable"):
        AdamSAGE(params, impl="fused").step()


def test_build_cache_is_keyed_and_reused(tmp_path, monkeypatch):
    """A fresh cache directory gets one library; scalars never enter the key, so nothing is rebuilt for them."""
    monkeypatch.setenv("FAIRSEQ_SAGE_CACHE", str(tmp_path))
    cxx = _fused_cpu._compiler()
    path = _fused_cpu.library_path(cxx)
    assert path.parent == tmp_path and path.suffix == ".so"
    lib = _fused_cpu._build()
    assert path.exists() and lib.sage_step is not None
    mtime = path.stat().st_mtime_ns
    _fused_cpu._build()
    assert path.stat().st_mtime_ns == mtime and list(tmp_path.iterdir()) == [path]
