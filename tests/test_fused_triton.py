"""The fused Triton kernel (``impl="triton"``, fairseq_plugins/optim/_fused_triton.py) on CPU tensors under Triton's
interpreter, against the float64 reference exactly as test_optim_reference.py tests the other impls (parameters and
every state tensor), plus what is particular to it: fp16/bf16 parameters with fp32 state, fairseq's flat parameters
over several chunks, empty, one-element and misaligned tensors, one kernel specialisation for every step, and the
kernel compiled for a Hopper GPU (sm_90) by Triton's own compiler, which needs no GPU.

TRITON_INTERPRET=1 is set per test (monkeypatch): the module reads it at each call and builds the interpreted kernel
explicitly, so the variable need not be set before Triton is imported and the rest of the suite never sees it. Skipped
only where Triton is not installed (``make setup`` installs it; see constraints.txt).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed (make setup installs the version in constraints.txt)")

from fairseq_plugins.optim import AdamaxSAGE, AdamSAGE  # noqa: E402
from fairseq_plugins.optim import _functional as F  # noqa: E402
from fairseq_plugins.optim import _fused_triton as FT  # noqa: E402
from tests import test_optim_reference as reference_tests  # noqa: E402
from tests import test_optim_state as state_tests  # noqa: E402
from tests.optim_infos import LOW_PRECISION, NEGLIGIBLE_EPS, OPTIMIZERS, cases  # noqa: E402

KW = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-4, weight_decay=0.05, beta3=0.8, sage_strength=0.7)


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """TRITON_INTERPRET for this test (read at each call: CPU tensors then run in Triton's interpreter)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch of the test: (grid, args, constants)."""
    seen = []
    launch = FT._launch

    def spy(kernel, grid, args, constants):
        seen.append((grid, args, dict(constants)))
        launch(kernel, grid, args, constants)

    monkeypatch.setattr(FT, "_launch", spy)
    return seen


@pytest.mark.parametrize("info, opt_input, dtype", cases(dtypes=(torch.float64,)))
def test_matches_reference_float64(info, opt_input, dtype):
    """test_optim_reference's test of every impl, run with ``impl="triton"``: every optimizer and option set
    (unselected tensors, strengths 0 to 2, both bias corrections), non-contiguous views, a zero tensor, a one-element
    tensor, one that never gets a gradient and one whose gradient comes and goes (its step count falls behind)."""
    reference_tests.test_fast_path_matches_reference_float64(info, opt_input, dtype, "triton")


@pytest.mark.parametrize("info, opt_input, dtype", cases(dtypes=LOW_PRECISION))
def test_low_precision_params_keep_fp32_state(info, opt_input, dtype):
    """test_optim_reference's fp16/bf16 test, run with ``impl="triton"``; and the same parameters and state as the
    single-tensor kernel (fp32 math, one rounding to the parameter's dtype, to nearest even)."""
    reference_tests.test_low_precision_params_keep_fp32_state(info, opt_input, dtype, "triton")
    results = []
    for impl in ("triton", "single_tensor"):
        params = reference_tests._make_params(dtype)
        results.append((params, reference_tests._run(info.optim_cls, opt_input, params, 20, impl=impl)))
    (low, opt), (single, single_opt) = results
    ulp = 2**-7 if dtype == torch.bfloat16 else 2**-10
    for p, r in zip(low, single, strict=True):
        torch.testing.assert_close(p.float(), r.float(), rtol=ulp, atol=1e-5)
        for key in info.state_keys:
            if opt.state[p]:
                torch.testing.assert_close(opt.state[p][key], single_opt.state[r][key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("info", cases())
def test_a_nan_gradient_gives_what_the_reference_gives(info):
    """test_optim_reference's NaN test with ``impl="triton"``: Adamax's infinity norm keeps a NaN as the reference."""
    reference_tests.test_a_nan_gradient_gives_what_the_reference_gives(info, "triton")


@pytest.mark.parametrize("copier", state_tests.COPIERS)
@pytest.mark.parametrize("info", cases())
def test_a_copy_steps_identically(info, copier):
    """test_optim_state's copy test with ``impl="triton"``."""
    state_tests.test_a_copy_steps_identically(info, "triton", copier)


def test_unselected_group_is_plain_adamw():
    """A group with sage=False takes exactly torch's AdamW update (the kernel's plain variant)."""
    params = reference_tests._make_params(torch.float64)[:2]
    ours, theirs = [p.clone() for p in params], [p.clone() for p in params]
    opt = AdamSAGE([{"params": ours, "sage": False}], lr=1e-2, weight_decay=0.1, eps=NEGLIGIBLE_EPS, impl="triton")
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, eps=NEGLIGIBLE_EPS)
    g = torch.Generator().manual_seed(5)
    for _ in range(10):
        for a, b in zip(ours, theirs, strict=True):
            a.grad = torch.randn(a.shape, generator=g, dtype=torch.float64)
            b.grad = a.grad.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert "exp_avg_sens" not in opt.state[a]


def _flat_and_odd(dtype, seed=0):
    """fairseq's --fp16 hands the optimizer one flat tensor of every weight: here one of 2 chunks and a bit (the last
    chunk ends in a partial block), beside an empty tensor, a one-element one and one at an odd address."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(2 * FT.CHUNK + FT.BLOCK + 5, generator=g, dtype=torch.float64).to(dtype)
    odd = torch.randn(FT.BLOCK + 3, generator=g, dtype=torch.float64).to(dtype)[1:]  # contiguous, storage offset 1
    return [flat, torch.zeros(0, dtype=dtype), torch.randn(1, generator=g, dtype=torch.float64).to(dtype), odd]


def _steps(opt, params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        opt.step()


@pytest.mark.parametrize("info", OPTIMIZERS, ids=lambda info: info.name)
def test_flat_empty_one_element_and_misaligned_tensors(info, launches):
    a, b = _flat_and_odd(torch.float64), _flat_and_odd(torch.float64)
    assert a[3].data_ptr() % 16 != 0
    fast = info.optim_cls(a, impl="triton", **KW)
    ref = info.reference_cls(b, bias_correction=fast.param_groups[0]["bias_correction"], **KW)
    _steps(fast, a, 4)
    _steps(ref, b, 4)
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        for key in info.state_keys:
            torch.testing.assert_close(fast.state[p][key], ref.state[q][key], rtol=1e-10, atol=1e-14)
    grid, args, constants = launches[-1]
    assert grid == (3 + 1 + 1,)  # the flat tensor's 3 chunks, one each for the others; none for the empty tensor
    assert constants["ALIGNED"] is False  # the odd tensor: no 16-byte vector accesses
    assert len(launches) == 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_flat_low_precision_matches_foreach(dtype, launches):
    """The flat tensor of fairseq's --fp16 (fp32 master weights) and of --memory-efficient-fp16 (fp16 weights, fp32
    state): the same as the foreach kernel, the impl that ``auto`` picks on CUDA where Triton cannot run."""
    results = []
    for impl in ("triton", "foreach"):
        params = _flat_and_odd(dtype)[:1]
        opt = AdamSAGE(params, impl=impl, **KW)
        _steps(opt, params, 3)
        results.append((params[0], opt.state[params[0]]))
    (p, ps), (q, qs) = results
    tol = 1e-6 if dtype == torch.float32 else 2**-10
    torch.testing.assert_close(p.float(), q.float(), rtol=tol, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq", "exp_avg_sens"):
        assert ps[key].dtype == torch.float32
        torch.testing.assert_close(ps[key], qs[key], rtol=1e-4 if dtype == torch.float16 else 1e-6, atol=1e-7)
    assert launches and launches[0][2]["ALIGNED"] is True


def _specialisation(args, constants):
    """The key Triton's JIT compiles by: each argument's type and alignment class, and the constexprs."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return tuple(native_specialize_impl(BaseBackend, a, False, True, True) for a in args), tuple(constants.items())


def test_one_specialisation_for_every_step(launches):
    """Step counts, lr and alpha change every step (a scheduler drives both) and tensors fall behind in their step
    counts: all of it reaches the kernel as tensor contents, so every launch of one group compiles to one variant."""
    params = [torch.randn(300, dtype=torch.float32), torch.randn(7, 3).to(torch.bfloat16), torch.randn(5)]
    opt = AdamSAGE(params, impl="triton", **KW)
    g = torch.Generator().manual_seed(2)
    for t in range(5):
        opt.param_groups[0]["lr"] = 1e-3 * (t + 1)
        opt.set_sage_strength(t / 4)
        for i, p in enumerate(params):
            p.grad = None if i == 2 and t % 2 else torch.randn(p.shape, generator=g).to(p.dtype)
        opt.step()
    assert float(opt.state[params[2]]["step"]) == 3 and float(opt.state[params[0]]["step"]) == 5
    keys = Counter(_specialisation(args, constants) for _, args, constants in launches)
    assert len(launches) == 10  # one per dtype per step
    assert len(keys) == 2 and set(keys.values()) == {5}, keys  # fp32 and bf16: one variant each, at every step
    for _, args, _ in launches:
        assert all(isinstance(a, torch.Tensor) for a in args)  # no number that Triton would specialise on


def test_mixed_dtypes_in_one_group_take_one_launch_each(launches):
    params = [torch.randn(40), torch.randn(40).to(torch.bfloat16), torch.randn(40).half(), torch.randn(40).double()]
    opt = AdamaxSAGE(params, impl="triton", **KW)
    _steps(opt, params, 1)
    kinds = sorted((c["BF16"], c["FP64"]) for _, _, c in launches)
    assert kinds == [(False, False), (False, False), (False, True), (True, False)]  # fp32, fp16, fp64, bf16
    for p in params:
        assert opt.state[p]["exp_inf"].dtype == F.compute_dtype(p.dtype)


def test_refusals(monkeypatch):
    """Before any launch: a state in the wrong dtype or of the wrong size (the kernel writes through raw addresses),
    and CPU tensors outside the interpreter."""
    p, step = torch.randn(4), [torch.tensor(1.0)]
    before = p.clone()
    options = F.StepOptions(lr=1e-3, beta1=0.9, beta2=0.99, beta3=0.8, eps=1e-8, weight_decay=0.0,
                            bias_correction=True, strength=1.0)  # fmt: skip

    def state(*sizes, dtype=torch.float32):
        return [[torch.zeros(n, dtype=dtype)] for n in sizes]

    with pytest.raises(ValueError, match="state in torch.float32"):
        FT.adam_sage([p], [torch.randn(4)], *state(4), *state(4, 4, dtype=torch.float64), step, options=options)
    with pytest.raises(ValueError, match="tensor 0 has 4 entries, list 3 holds 5"):
        FT.adam_sage([p], [torch.randn(4)], *state(4, 5, 4), step, options=options)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="runs on CUDA tensors.*TRITON_INTERPRET=1"):
        FT.adam_sage([p], [torch.randn(4)], *state(4, 4, 4), step, options=options)
    if not torch.cuda.is_available():
        assert "no CUDA device" in FT.error()
        with pytest.raises(RuntimeError, match="impl='triton' is unavailable: .*no CUDA device"):
            F.resolve_impl("triton", [p])
    assert torch.equal(p, before) and float(step[0]) == 1.0  # nothing moved


def test_importing_the_plugin_does_not_import_triton():
    code = "import sys, fairseq_plugins.optim._fused_triton; assert 'triton' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# one variant per constexpr branch: (parameter dtype, state dtype, ADAMAX, SAGE, ALIGNED, PLAN)
VARIANTS = [("fp32", "fp32", False, True, True, False), ("bf16", "fp32", True, True, True, False),
            ("fp16", "fp32", False, False, False, False), ("fp64", "fp64", True, False, True, False),
            ("fp64", "fp64", False, True, False, False), ("fp32", "fp32", False, True, True, True),
            ("bf16", "fp32", True, True, True, True), ("fp64", "fp64", False, False, False, True)]  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def test_compiles_for_hopper(variant):
    """Triton's compiler (its bundled ptxas; no GPU needed) turns the kernel into an sm_90 cubin: what the GPU path
    runs. Aligned fp32 tensors get 16-byte vector accesses; fp32 division and square root are IEEE-rounded."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pdt, sdt, adamax, sage, aligned, plan = variant
    kernel = FT._load(interpret=False)
    signature = {"tensors": "*i64", "grads": "*i64", "chunks": "*i64", "scalars": "*fp64", "counters": "*fp32",
                 "PARAM": f"*{pdt}", "GRAD": f"*{pdt}", "STATE": f"*{sdt}"}  # fmt: skip
    constants = dict(ADAMAX=adamax, SAGE=sage, FP64=sdt == "fp64", BF16=pdt == "bf16", ALIGNED=aligned, PLAN=plan,
                     BLOCK=FT.BLOCK)  # fmt: skip
    signature.update({name: "constexpr" for name in constants})
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants), target=GPUTarget("cuda", 90, 32))
    except RuntimeError as exc:
        if "ptxas" in str(exc) and "not found" in str(exc):
            pytest.skip(f"Triton's ptxas is missing here: {exc}")
        raise
    assert len(compiled.asm["cubin"]) > 1000
    ptx = compiled.asm["ptx"]
    assert ".target sm_90" in ptx
    if aligned and pdt == "fp32":
        assert re.search(r"ld\.global(\.\w+)*\.v4\.b32", ptx) and re.search(r"st\.global(\.\w+)*\.v4\.b32", ptx)
    if sdt == "fp32":
        assert "div.rn.f32" in ptx and "sqrt.approx" not in ptx and "div.full" not in ptx
    if plan and not adamax:  # the bias corrections in float64, with IEEE square root and division
        assert "sqrt.rn.f64" in ptx and "div.rn.f64" in ptx
