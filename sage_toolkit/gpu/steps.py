"""One optimizer step on real model shapes: time and memory per optimizer, and the fused path's parity with foreach.

Every variant holds its own copy of the same parameters; each round gives all of them the same fresh gradients and
times one step of every variant in a new random order (interleaved, so drifts of clock and temperature hit all alike),
with a device synchronisation before and after each step. The figure per variant is the median over the rounds after
the warm-up rounds, and its ratio to torch's fused AdamW measured in the same rounds. Memory: the persistent state
(bytes of every tensor in the optimizer's state) and the transient peak of one step (``max_memory_allocated`` during
the step minus ``memory_allocated`` before it; CUDA only).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fairseq_plugins.optim import AdamSAGE
from sage_toolkit.model_shapes import transformer_shapes

# ---------------------------------------------------------------- parameter shapes


def _shapes(layers: int, dim: int, ffn: int, vocab: int) -> list[tuple[int, ...]]:
    """A model with one joined dictionary and ``--share-all-embeddings`` (the WMT'16 En-De recipes)."""
    return [shape for _, shape in transformer_shapes(layers, dim, ffn, vocab, vocab, share_all=True, share_dec_io=True)]


MODELS = {
    "transformer_wmt_en_de": _shapes(6, 512, 2048, 32768),
    "transformer_vaswani_wmt_en_de_big": _shapes(6, 1024, 4096, 32768),
    "tiny": _shapes(1, 32, 64, 100),  # smoke mode only
}

# ---------------------------------------------------------------- optimizers


def _fairseq_adam(params):
    from fairseq.optim.adam import Adam  # fairseq's --optimizer adam (imports fairseq: only when measured)

    return Adam(params, lr=5e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-4)


VARIANTS: dict[str, Callable] = {
    "adamw_fused": lambda params: torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4, fused=True),
    "fairseq_adam": _fairseq_adam,
    "sage_foreach": lambda params: AdamSAGE(params, lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4, impl="foreach"),
    "sage_triton": lambda params: AdamSAGE(params, lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4, impl="triton"),
}
REFERENCE = "adamw_fused"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


@dataclass
class StepResult:
    model: str
    dtype: str
    parameters: int
    variant: str
    median_ms: float | None = None
    ratio_to_adamw_fused: float | None = None
    state_mb: float | None = None
    transient_mb: float | None = None
    error: str | None = None


def time_steps(model: str, dtype: torch.dtype, variants: list[str], rounds: int, warmup: int,
               device: torch.device) -> list[StepResult]:  # fmt: skip
    """The interleaved benchmark of ``variants`` on ``model``'s shapes in ``dtype``; a variant that cannot be built
    or stepped here is reported with its error and left out of the rounds."""
    shapes = MODELS[model]
    gen = torch.Generator(device=device).manual_seed(0)
    init = [torch.randn(s, generator=gen, device=device, dtype=torch.float32).mul_(0.02).to(dtype) for s in shapes]
    dtype_name = str(dtype).removeprefix("torch.")
    results = {name: StepResult(model, dtype_name, sum(p.numel() for p in init), name) for name in variants}
    runs: dict[str, tuple[torch.optim.Optimizer, list[torch.Tensor]]] = {}
    for name in variants:
        params = [p.clone().requires_grad_() for p in init]
        try:
            opt = VARIANTS[name](params)
            for p in params:
                p.grad = torch.zeros_like(p)
            opt.step()  # builds the state (and compiles a kernel) outside the timed rounds
            runs[name] = (opt, params)
        except Exception as exc:  # reported in the table, the other variants still run
            results[name].error = f"{type(exc).__name__}: {exc}"[:300]
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs)
    rng = random.Random(0)
    for r in range(warmup + rounds):
        grads = [torch.randn(s, generator=gen, device=device, dtype=torch.float32).to(dtype) for s in shapes]
        rng.shuffle(order)
        for name in order:
            opt, params = runs[name]
            for p, g in zip(params, grads, strict=True):
                p.grad.copy_(g)
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            start = time.perf_counter()
            opt.step()
            _sync(device)
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed * 1e3)
                if device.type == "cuda":
                    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
                    results[name].transient_mb = max(results[name].transient_mb or 0.0, peak)
    reference = statistics.median(times[REFERENCE]) if times.get(REFERENCE) else None
    for name, values in times.items():
        result = results[name]
        result.median_ms = statistics.median(values) if values else None
        if reference and result.median_ms is not None:
            result.ratio_to_adamw_fused = result.median_ms / reference
        result.state_mb = _state_bytes(runs[name][0]) / 2**20
    return [results[name] for name in variants]


STATE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_sens")


def _tensors(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """The parameters and each state tensor of ``opt``, in float64."""
    out = {"param": [p.detach().double() for p in params]}
    out.update({key: [opt.state[p][key].double() for p in params] for key in STATE_KEYS})
    return out


def _max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest difference of two lists of tensors, each relative to ``b``'s tensor's largest magnitude."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if y.numel():
            scale, diff = y.abs().max().item(), (x - y).abs().max().item()
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def parity(model: str, dtype: torch.dtype, steps: int, device: torch.device) -> dict:
    """The fused (triton) and foreach paths from the same parameters through the same ``steps`` gradients, and a
    float64 run (foreach on float64 copies of the same parameters and gradients) as the exact result: for the
    parameters and each state tensor, the largest difference of triton and foreach and of each from the float64 run,
    relative to that tensor's largest magnitude (``by_tensor``); their maxima over the tensors (``max_rel_diff``:
    triton vs foreach; ``max_rel_err_triton``, ``max_rel_err_foreach``: vs float64), and the largest absolute
    difference of the parameters of triton and foreach. The float64 run tells whether a difference of the two paths is
    an error of one of them or the rounding that both make, amplified by the algorithm."""
    shapes = MODELS[model]
    gen = torch.Generator(device=device).manual_seed(1)
    init = [torch.randn(s, generator=gen, device=device, dtype=torch.float32).mul_(0.02).to(dtype) for s in shapes]
    runs = {}
    for impl, run_dtype in (("triton", dtype), ("foreach", dtype), ("float64", torch.float64)):
        params = [p.to(run_dtype, copy=True).requires_grad_() for p in init]
        runs[impl] = (AdamSAGE(params, lr=5e-4, betas=(0.9, 0.98), weight_decay=1e-4,
                               impl="foreach" if impl == "float64" else impl), params)  # fmt: skip
    for _ in range(steps):
        grads = [torch.randn(s, generator=gen, device=device, dtype=torch.float32).to(dtype) for s in shapes]
        for opt, params in runs.values():
            for p, g in zip(params, grads, strict=True):
                p.grad = g.to(p.dtype, copy=True)  # each run its own: a step may write into its gradient
            opt.step()
    tensors = {impl: _tensors(opt, params) for impl, (opt, params) in runs.items()}
    by_tensor = {
        key: dict(
            triton_vs_foreach=_max_rel_diff(tensors["triton"][key], tensors["foreach"][key]),
            triton_vs_float64=_max_rel_diff(tensors["triton"][key], tensors["float64"][key]),
            foreach_vs_float64=_max_rel_diff(tensors["foreach"][key], tensors["float64"][key]),
        )  # fmt: skip
        for key in ("param", *STATE_KEYS)
    }
    worst_abs = max(((a - b).abs().max().item() for a, b in zip(tensors["triton"]["param"],
                                                               tensors["foreach"]["param"], strict=True)
                     if a.numel()), default=0.0)  # fmt: skip
    return dict(model=model, dtype=str(dtype).removeprefix("torch."), steps=steps,
                max_rel_diff=max(v["triton_vs_foreach"] for v in by_tensor.values()),
                max_rel_err_triton=max(v["triton_vs_float64"] for v in by_tensor.values()),
                max_rel_err_foreach=max(v["foreach_vs_float64"] for v in by_tensor.values()),
                max_abs_param_diff=worst_abs, by_tensor=by_tensor)  # fmt: skip
