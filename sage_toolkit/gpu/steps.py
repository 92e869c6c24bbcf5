"""One optimizer step on real model shapes: torch's fused AdamW against SAGE's triton step, eager and captured.

Variants (``VARIANTS``): ``adamw_fused`` (torch.optim.AdamW, fused=True: the reference of the ratios),
``adamw_fused_graph`` (the same with capturable=True, its step captured in a CUDA graph and replayed),
``sage_triton_lists`` (AdamSAGE, impl triton, through the step of the code before launch plans: lists of tensors and
step counts on the CPU at every step), ``sage_triton`` (the launch plan), ``sage_triton_graph`` (the launch plan with
capturable=True, captured), ``adamw_compiled`` (AdamW with a tensor lr, its step compiled by torch.compile; slow to
build, so the check runs it apart and last). The graph and compiled variants need CUDA.

Every variant holds its own copy of the same parameters, and all read the same gradient tensors (static: what a
captured step needs; they get new values in place between rounds). Each round times one step of every variant in a
new random order (interleaved), and per variant:

- ``sync_ms``: the step between two device synchronisations (the median over the rounds after the warm-up);
- ``host_us``: the time the ``step()`` call itself takes on the host, the device idle when it starts;
- ``pipelined_ms``: ``pipeline`` steps issued back to back and one synchronisation at the end, per step (the median
  over ``pipeline_repeats`` repeats, interleaved too): what training sees when the host runs ahead of the device;
- ``kernel_us``: the device time of one step's kernels and copies (torch.profiler over ``profiled`` steps; CUDA);
- ``state_mb``, ``transient_mb``: the optimizer's state, and the peak of one step beyond what was allocated (CUDA).

``parity`` runs the plan, the list path and a float64 run from the same parameters through the same gradients (and on
CUDA the captured plan, which must equal the eager one bit for bit); ``sync_check`` steps the plan under
``torch.cuda.set_sync_debug_mode("error")`` (and the list path, which must fail it: the check can see a sync).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fairseq_plugins.optim import AdamSAGE
from sage_toolkit.model_shapes import transformer_shapes

LR, BETAS, WEIGHT_DECAY = 5e-4, (0.9, 0.98), 1e-4

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


def _sage(params: list[Tensor], **kw) -> AdamSAGE:
    return AdamSAGE(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, impl="triton", **kw)


def _adamw(params: list[Tensor], **kw) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, **kw)


def captured(opt: torch.optim.Optimizer, device: torch.device, warmup: int = 3) -> Callable[[], None]:
    """``opt.step`` captured in a CUDA graph after ``warmup`` steps on a side stream (torch's recipe); returns the
    replay. The parameters' gradients must stay the tensors they are (static), as for every captured optimizer."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            opt.step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    return graph.replay


def _lists(opt: AdamSAGE) -> AdamSAGE:
    opt._launch_plans = False  # the step of the code before launch plans
    return opt


def _eager(opt: torch.optim.Optimizer, device: torch.device):
    return opt, opt.step


def _compiled(params: list[Tensor], device: torch.device):
    opt = torch.optim.AdamW(params, lr=torch.tensor(LR, device=device), betas=BETAS, weight_decay=WEIGHT_DECAY,
                            foreach=True, capturable=True)  # fmt: skip
    return opt, torch.compile(opt.step, fullgraph=False)


@dataclass(frozen=True)
class Variant:
    make: Callable[[list[Tensor], torch.device], tuple[torch.optim.Optimizer, Callable[[], None]]]
    needs_cuda: bool = False


VARIANTS: dict[str, Variant] = {
    "adamw_fused": Variant(lambda ps, d: _eager(_adamw(ps, fused=True), d)),
    "adamw_fused_graph": Variant(lambda ps, d: (o := _adamw(ps, fused=True, capturable=True), captured(o, d)), True),
    "sage_triton_lists": Variant(lambda ps, d: _eager(_lists(_sage(ps)), d)),
    "sage_triton": Variant(lambda ps, d: _eager(_sage(ps), d)),
    "sage_triton_graph": Variant(lambda ps, d: (o := _sage(ps, capturable=True), captured(o, d)), True),
    "adamw_compiled": Variant(_compiled, True),
}
REFERENCE = "adamw_fused"
STEP_VARIANTS = ("adamw_fused", "adamw_fused_graph", "sage_triton_lists", "sage_triton", "sage_triton_graph")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    seen, total = set(), 0
    for s in opt.state.values():
        for t in s.values():
            if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
    return total


@dataclass
class StepResult:
    model: str
    dtype: str
    parameters: int
    tensors: int
    variant: str
    sync_ms: float | None = None
    host_us: float | None = None
    pipelined_ms: float | None = None
    kernel_us: float | None = None
    ratio_to_adamw_fused: float | None = None  # sync_ms over fused AdamW's
    pipelined_ratio: float | None = None  # pipelined_ms over fused AdamW's
    state_mb: float | None = None
    transient_mb: float | None = None
    first_step_s: float | None = None
    error: str | None = None
    skipped: str | None = None


@dataclass
class _Run:
    opt: torch.optim.Optimizer
    step: Callable[[], None]
    sync: list[float] = field(default_factory=list)
    host: list[float] = field(default_factory=list)
    pipelined: list[float] = field(default_factory=list)


def _kernel_us(step: Callable[[], None], device: torch.device, steps: int) -> float | None:
    """The device time of one step: the kernels and copies that torch.profiler sees over ``steps`` steps."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    total = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    return total / steps if total else None


def time_steps(model: str, dtype: torch.dtype, variants: list[str], rounds: int, warmup: int, device: torch.device,
               pipeline: int = 50, pipeline_repeats: int = 5, profiled: int = 10) -> list[StepResult]:  # fmt: skip
    """The interleaved benchmark of ``variants`` on ``model``'s shapes in ``dtype``; a variant that cannot run here
    (no CUDA) is reported as skipped, one that fails with its error, and the others still run."""
    shapes = MODELS[model]
    gen = torch.Generator(device=device).manual_seed(0)
    init = [torch.randn(s, generator=gen, device=device, dtype=torch.float32).mul_(0.02).to(dtype) for s in shapes]
    grads = [torch.empty(s, device=device, dtype=dtype) for s in shapes]
    for g in grads:
        g.copy_(torch.randn(g.shape, generator=gen, device=device).mul_(1e-3))
    name_of = str(dtype).removeprefix("torch.")
    results = {name: StepResult(model, name_of, sum(p.numel() for p in init), len(init), name) for name in variants}
    runs = _start_runs(results, init, grads, device)
    order, rng = list(runs), random.Random(0)
    _timed_rounds(runs, results, order, rng, grads, gen, warmup + rounds, warmup, device)
    _pipelined_rounds(runs, order, rng, pipeline, pipeline_repeats, device)
    _medians(runs, results, device, profiled)
    return [results[name] for name in variants]


def _start_runs(results: dict[str, StepResult], init: list[Tensor], grads: list[Tensor], device) -> dict[str, _Run]:
    """Each variant on its own copy of ``init`` with the shared ``grads``, after its first (untimed) step."""
    runs: dict[str, _Run] = {}
    for name, result in results.items():
        if VARIANTS[name].needs_cuda and device.type != "cuda":
            result.skipped = "needs CUDA"
            continue
        params = [p.clone().requires_grad_() for p in init]
        for p, g in zip(params, grads, strict=True):
            p.grad = g  # the same gradients for every variant: static, as a captured step needs
        try:
            start = time.perf_counter()
            opt, step = VARIANTS[name].make(params, device)
            step()  # builds the state, compiles kernels, outside the timed rounds
            _sync(device)
            result.first_step_s = time.perf_counter() - start
            runs[name] = _Run(opt, step)
        except Exception as exc:  # reported in the table, the other variants still run
            result.error = f"{type(exc).__name__}: {exc}"[:300]
    return runs


def _timed_rounds(runs: dict[str, _Run], results: dict[str, StepResult], order: list[str], rng: random.Random,
                  grads: list[Tensor], gen, total: int, warmup: int, device) -> None:  # fmt: skip
    """``total`` rounds of one synchronised step per variant in a fresh random order, new gradients each round; the
    rounds after ``warmup`` record host and synchronised times and the transient memory peak."""
    for r in range(total):
        for g in grads:
            g.normal_(0.0, 1e-3, generator=gen)
        rng.shuffle(order)
        for name in order:
            run = runs[name]
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            start = time.perf_counter()
            run.step()
            issued = time.perf_counter()
            _sync(device)
            done = time.perf_counter()
            if r >= warmup:
                run.host.append((issued - start) * 1e6)
                run.sync.append((done - start) * 1e3)
                if device.type == "cuda":
                    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
                    results[name].transient_mb = max(results[name].transient_mb or 0.0, peak)


def _pipelined_rounds(runs: dict[str, _Run], order: list[str], rng: random.Random, pipeline: int, repeats: int,
                      device) -> None:  # fmt: skip
    """The ms per step of ``pipeline`` steps issued back to back (one synchronisation at the end)."""
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            run = runs[name]
            _sync(device)
            start = time.perf_counter()
            for _ in range(pipeline):
                run.step()
            _sync(device)
            run.pipelined.append((time.perf_counter() - start) * 1e3 / pipeline)


def _medians(runs: dict[str, _Run], results: dict[str, StepResult], device, profiled: int) -> None:
    """Each run's medians, state, kernel time (CUDA) and ratios to the reference variant, into ``results``."""
    for name, run in runs.items():
        result = results[name]
        result.sync_ms = statistics.median(run.sync) if run.sync else None
        result.host_us = statistics.median(run.host) if run.host else None
        result.pipelined_ms = statistics.median(run.pipelined) if run.pipelined else None
        result.state_mb = _state_bytes(run.opt) / 2**20
        if device.type == "cuda":
            try:
                result.kernel_us = _kernel_us(run.step, device, profiled)
            except Exception as exc:  # the profiler is an extra: its failure is noted, the timings stand
                result.error = f"kernel time: {type(exc).__name__}: {exc}"[:300]
    reference = results.get(REFERENCE)
    for result in results.values():
        if reference and reference.sync_ms and result.sync_ms:
            result.ratio_to_adamw_fused = result.sync_ms / reference.sync_ms
        if reference and reference.pipelined_ms and result.pipelined_ms:
            result.pipelined_ratio = result.pipelined_ms / reference.pipelined_ms


# ---------------------------------------------------------------- parity

STATE_KEYS = ("exp_avg", "exp_avg_sq", "exp_avg_sens")


def _tensors(opt: torch.optim.Optimizer, params: list[Tensor]) -> dict[str, list[Tensor]]:
    """The parameters and each state tensor of ``opt``, in float64."""
    out = {"param": [p.detach().double() for p in params]}
    out.update({key: [opt.state[p][key].double() for p in params] for key in STATE_KEYS})
    return out


def _max_rel_diff(a: list[Tensor], b: list[Tensor]) -> float:
    """The largest difference of two lists of tensors, each relative to ``b``'s tensor's largest magnitude."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if y.numel():
            scale, diff = y.abs().max().item(), (x - y).abs().max().item()
            worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def parity(model: str, dtype: torch.dtype, steps: int, device: torch.device) -> dict:
    """The plan (``triton``), the list path (``lists``), on CUDA the captured plan (``graph``), and a float64 run
    (foreach on float64 copies) as the exact result, from the same parameters through the same ``steps`` gradients:
    per tensor kind (``by_tensor``) and over all (``max_*``), the largest difference relative to the tensor's largest
    magnitude: plan vs list path, each vs float64, and the captured plan vs the eager one (``graph_vs_eager``: the
    same kernels on the same inputs, so 0)."""
    shapes = MODELS[model]
    gen = torch.Generator(device=device).manual_seed(1)
    init = [torch.randn(s, generator=gen, device=device, dtype=torch.float32).mul_(0.02).to(dtype) for s in shapes]
    kinds = [("triton", dtype), ("lists", dtype), ("float64", torch.float64)]
    if device.type == "cuda":
        kinds.append(("graph", dtype))
    runs = {}
    for kind, run_dtype in kinds:
        params = [p.to(run_dtype, copy=True).requires_grad_() for p in init]
        for p in params:
            p.grad = torch.zeros_like(p)
        if kind == "float64":
            opt = AdamSAGE(params, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, impl="foreach")
        else:
            opt = _sage(params, capturable=kind == "graph")
            if kind == "lists":
                _lists(opt)
        runs[kind] = [opt, params, opt.step]
    for t in range(steps):
        grads = [torch.randn(s, generator=gen, device=device, dtype=torch.float32).to(dtype) for s in shapes]
        for kind, run in runs.items():
            opt, params, step = run
            for p, g in zip(params, grads, strict=True):
                p.grad.copy_(g)  # in place: the captured step reads these tensors
            step()
            if kind == "graph" and t == 0:  # the first step eager (it builds the plan), then the captured replay
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    opt.step()
                run[2] = graph.replay
    tensors = {kind: _tensors(opt, params) for kind, (opt, params, _) in runs.items()}
    pairs = {"triton_vs_lists": ("triton", "lists"), "triton_vs_float64": ("triton", "float64"),
             "lists_vs_float64": ("lists", "float64")}  # fmt: skip
    if "graph" in runs:
        pairs["graph_vs_eager"] = ("graph", "triton")
    by_tensor = {key: {name: _max_rel_diff(tensors[a][key], tensors[b][key]) for name, (a, b) in pairs.items()}
                 for key in ("param", *STATE_KEYS)}  # fmt: skip
    out = dict(model=model, dtype=str(dtype).removeprefix("torch."), steps=steps, by_tensor=by_tensor)
    for name in pairs:
        out[f"max_{name}"] = max(v[name] for v in by_tensor.values())
    return out


# ---------------------------------------------------------------- host-device synchronisations


def sync_check(model: str, device: torch.device, steps: int = 5) -> dict:
    """Steps of the plan under ``torch.cuda.set_sync_debug_mode("error")`` after a warm-up step, in the three ways a
    run sets its options (a float lr that a scheduler changes at every step; lr and strength as tensors on the device)
    with new gradient tensors at every step (as fairseq and zero_grad(set_to_none=True) make them); then the list
    path, which synchronises (a blocking copy of its tables): the check must see that one."""
    if device.type != "cuda":
        return dict(skipped="needs CUDA (torch.cuda.set_sync_debug_mode)")
    shapes = MODELS[model]
    out = {}
    cases = {
        "plan, float lr changed every step": dict(lr=LR),
        "plan, lr and strength tensors on the device": dict(lr=torch.tensor(LR, device=device),
                                                            strength=torch.tensor(0.5, device=device)),
        "list path (must synchronise)": dict(lr=LR, lists=True),
    }  # fmt: skip
    for case, how in cases.items():
        params = [torch.randn(s, device=device).mul_(0.02).requires_grad_() for s in shapes]
        opt = _sage(params)
        opt.param_groups[0]["lr"] = how["lr"]
        if "strength" in how:
            opt.set_sage_strength(how["strength"])
        if how.get("lists"):
            _lists(opt)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()  # builds the plan: outside the checked steps
        torch.cuda.synchronize(device)
        error = None
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(steps):
                for p in params:
                    p.grad = torch.randn_like(p)
                if isinstance(how["lr"], float):
                    opt.param_groups[0]["lr"] = LR / (t + 2)
                opt.step()
        except RuntimeError as exc:
            error = str(exc).splitlines()[0][:200]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize(device)
        out[case] = dict(synchronised=error is not None, error=error)
    return out
