"""The benchmark scripts run (tiny shapes, two rounds) and their comparison optimizers compute SAGE's update.

No timing is asserted: the speed figures come from running the scripts (BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from fairseq_plugins.optim import ReferenceAdamSAGE
from sage_toolkit.bench import host_step as bench_host_step
from sage_toolkit.bench import optimizer as bench_optimizer
from sage_toolkit.bench import optimizer_gpu as bench_optimizer_gpu

KW = dict(lr=1e-2, betas=(0.9, 0.98), eps=1e-4, weight_decay=0.01, beta3=0.75)


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)]


def _grads(params, t):
    g = torch.Generator().manual_seed(100 + t)
    return [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]


def test_authors_style_loop_computes_the_reference_update():
    ours, ref = _params(), _params()
    a, r = bench_optimizer.AuthorsStyleSAGE(ours, **KW), ReferenceAdamSAGE(ref, bias_correction=True, **KW)
    for t in range(1, 8):
        for p, q, gr in zip(ours, ref, _grads(ours, t), strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        a.step()
        r.step()
    for p, q in zip(ours, ref, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_flat_step_function_computes_the_reference_update():
    """The function the GPU benchmark compiles, run eagerly here, with its 0-dim tensor scalars."""
    (b1, b2), b3, lr, wd, eps = KW["betas"], KW["beta3"], KW["lr"], KW["weight_decay"], KW["eps"]
    ref_params = _params()
    flat = torch.cat([p.reshape(-1) for p in _params()])
    m, v, s = torch.zeros_like(flat), torch.zeros_like(flat), torch.zeros_like(flat)
    ref = ReferenceAdamSAGE(ref_params, bias_correction=True, **KW)
    for t in range(1, 8):
        grads = _grads(ref_params, t)
        for q, gr in zip(ref_params, grads, strict=True):
            q.grad = gr
        ref.step()
        scalars = [lr * math.sqrt(1 - b2**t) / (1 - b1**t), 1 - lr * wd, 1 - b3**t, b1, b2, b3, eps, 1.0]
        scalars = [torch.tensor(x, dtype=torch.float64) for x in scalars]
        bench_optimizer.flat_adam_sage_step(flat, torch.cat([g.reshape(-1) for g in grads]), m, v, s, *scalars)
    torch.testing.assert_close(flat, torch.cat([q.reshape(-1) for q in ref_params]), rtol=1e-10, atol=1e-12)


def test_transformer_shapes_match_the_fairseq_sizes():
    counts = {k: sum(math.prod(s) for _, s in v) for k, v in bench_optimizer.MODELS.items()}
    assert 60e6 < counts["wmt"] < 62e6 and 42e6 < counts["iwslt"] < 44e6


@pytest.mark.slow
def test_cpu_benchmark_runs(tmp_path):
    out = bench_optimizer.main(
        ["--models", "tiny", "--rounds", "2", "--warmup", "1", "--json", str(tmp_path / "b.json")]
    )
    results = out["models"][0]["results"]
    assert set(results) == set(bench_optimizer.DEFAULT_VARIANTS)
    assert results["sage_fused"]["transient_mb"] < 0.01  # no tensor-sized allocation (a few step scalars)
    assert results["authors_loop"]["transient_mb"] > 0.0
    assert results["sage_fused"]["state_mb"] == pytest.approx(1.5 * results["adamw_fused"]["state_mb"], rel=0.01)
    assert json.loads((tmp_path / "b.json").read_text())["models"][0]["targets"]


def test_gpu_benchmark_script_runs_on_cpu(tmp_path):
    path = tmp_path / "gpu.json"
    bench_optimizer_gpu.main(["--device", "cpu", "--models", "tiny", "--rounds", "2", "--warmup", "1", "--no-compile",
                              "--json", str(path)])  # fmt: skip
    out = json.loads(path.read_text())
    assert out["machine"]["device"] == "cpu"
    assert set(out["models"][0]["results"]) == set(bench_optimizer_gpu.GPU_VARIANTS)


def test_cpu_benchmark_compares_the_plan_with_the_list_path():
    out = bench_optimizer.main(["--models", "tiny", "--rounds", "2", "--warmup", "1", "--variants", "sage_fused",
                                "sage_fused_lists", "adamw_fused"])  # fmt: skip
    model = out["models"][0]
    assert model["results"]["sage_fused_lists"]["paired_ratio_to_adamw_fused"] > 0
    assert "SAGE step (launch plan) / list path's step (paired ratios)" in model["targets"]


def test_host_step_benchmark_runs(capsys):
    impls = ["fused"] + (["triton"] if importlib.util.find_spec("triton") else [])
    results = bench_host_step.main(["--tensors", "2", "6", "--rounds", "3", "--impls", *impls])
    assert set(results) == set(impls)
    for paths in results.values():
        assert set(paths) == {"lists", "plan"} and all(us > 0 for p in paths.values() for us in p.values())
    assert "per extra tensor, plan / list path" in capsys.readouterr().out
