"""One optimizer step on the parameter shapes of transformer_wmt_en_de and transformer_iwslt_de_en: time and memory.

Every variant runs in this one process on the same parameters and gradients, interleaved: each round times one step of
every variant in a fresh random order, and the figure per variant is the median over the rounds (after warm-up
steps). Ratios are taken to torch.optim.AdamW(fused=True) measured in the same rounds. Memory: the persistent state is
the bytes of every tensor in the optimizer's state; the transient memory is the peak, during one step, of the bytes the
torch CPU allocator holds beyond what it held before the step (allocation and free events from torch.profiler with
profile_memory=True, summed in time order).

    python scripts/bench/bench_optimizer.py                      # both models, 30 rounds
    python scripts/bench/bench_optimizer.py --models iwslt --rounds 20 --json out.json

Variants: ``sage_fused``, ``sage_single_tensor``, ``sage_foreach`` (AdamSAGE with each impl), ``adamax_sage_fused``,
``sage_fused_lists`` (the fused kernel through the step before launch plans: lists of tensors built at every step),
``adamw_foreach``, ``adamw_fused`` (torch), ``fairseq_adam`` (fairseq.optim.adam.Adam, the optimizer behind
``--optimizer adam``), ``authors_loop`` (a per-tensor loop written the way the authors' optimizer is written, with a
new tensor for every intermediate; here for comparison only), and with ``--compile`` ``sage_compiled_flat`` (the
SAGE step as one torch.compile'd element-wise function over flat buffers; its compile time is printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time

import torch

from fairseq_plugins.optim import AdamaxSAGE, AdamSAGE
from sage_toolkit.model_shapes import transformer_shapes

# ---------------------------------------------------------------------------------------------- parameter shapes


MODELS = {
    # WMT'16 En-De (scaling_nmt): 32k joined BPE dictionary, --share-all-embeddings
    "wmt": transformer_shapes(6, 512, 2048, 32768, 32768, share_all=True, share_dec_io=True),
    # IWSLT'14 De-En (examples/translation): BPE 10k, fairseq's dictionaries of 8848 (de) and 6632 (en) types
    "iwslt": transformer_shapes(6, 512, 1024, 8848, 6632, share_all=False, share_dec_io=False),
}
MODELS["tiny"] = transformer_shapes(1, 32, 64, 100, 100, share_all=False, share_dec_io=True)  # smoke tests only
MODEL_NAMES = {"wmt": "transformer_wmt_en_de", "iwslt": "transformer_iwslt_de_en", "tiny": "tiny (smoke test)"}

# ---------------------------------------------------------------------------------------------- comparison optimizers


class AuthorsStyleSAGE(torch.optim.Optimizer):
    """AdamW-SAGE written as a per-tensor Python loop with a new tensor for every intermediate (I, the smoothed
    sensitivity, its bias-corrected value, U, r, the Adam update), the way the authors' optimizer is organised.
    Written here from the formula (same multiplier as AdamSAGE); for speed and memory comparison only."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, beta3=0.75):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, beta3=beta3))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), b3, eps, lr, wd = group["betas"], group["beta3"], group["eps"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["exp_avg_ipt"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                exp_avg = state["exp_avg"] * b1 + (1 - b1) * g
                exp_avg_sq = state["exp_avg_sq"] * b2 + (1 - b2) * g * g
                state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
                ipt = (p * g).abs()
                exp_avg_ipt = state["exp_avg_ipt"] * b3 + (1 - b3) * ipt
                state["exp_avg_ipt"] = exp_avg_ipt
                ipt_hat = exp_avg_ipt / (1 - b3**t)
                uncertainty = (ipt - ipt_hat).abs()
                ratio = (uncertainty + eps**2) / (ipt_hat + eps**2)
                denom = exp_avg_sq.sqrt() + eps
                step_size = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
                update = ratio * (exp_avg / denom)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(-step_size * update)


def flat_adam_sage_step(p, g, m, v, s, step_size, decay, bc3, beta1, beta2, beta3, eps, strength):
    """AdamW-SAGE on flat buffers as plain torch ops, for torch.compile (one fused element-wise kernel). Every scalar
    that changes between steps is a 0-dim tensor, so a new step count or lr does not recompile. In place."""
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).add_((1 - beta2) * g * g)  # no Python-number argument: beta2 may be a tensor
    sens = (p * g).abs()
    s.lerp_(sens, 1 - beta3)
    floor = bc3 * eps * eps
    r = ((bc3 * sens - s).abs() + floor) / (s + floor)
    update = (strength * r + (1 - strength)) * m / (v.sqrt() + eps)
    p.mul_(decay).sub_(step_size * update)


class FlatCompiledSAGE:
    """AdamW-SAGE over one flat parameter buffer with ``flat_adam_sage_step`` compiled (fairseq's --fp16 layout)."""

    def __init__(self, numel, device, lr=1e-4, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.0, beta3=0.75):
        self.p = torch.randn(numel, device=device) * 0.02
        self.g = torch.randn(numel, device=device) * 1e-3
        self.state = {k: torch.zeros(numel, device=device) for k in ("exp_avg", "exp_avg_sq", "exp_avg_sens")}
        self.lr, self.betas, self.eps, self.wd, self.beta3, self.t = lr, betas, eps, weight_decay, beta3, 0
        self.fn = torch.compile(flat_adam_sage_step, dynamic=False, fullgraph=True)
        self.device = device

    def step(self):
        self.t += 1
        (b1, b2), t = self.betas, self.t
        scalars = [
            self.lr * math.sqrt(1 - b2**t) / (1 - b1**t),
            1 - self.lr * self.wd,
            1 - self.beta3**t,
            b1,
            b2,
            self.beta3,
            self.eps,
            1.0,
        ]
        scalars = [torch.tensor(x, dtype=torch.float32, device=self.device) for x in scalars]
        st = self.state
        self.fn(self.p, self.g, st["exp_avg"], st["exp_avg_sq"], st["exp_avg_sens"], *scalars)


# ---------------------------------------------------------------------------------------------- measurement


def state_bytes(opt) -> int:
    state = opt.state.values() if hasattr(opt, "param_groups") else [opt.state]
    return sum(t.numel() * t.element_size() for s in state for t in s.values() if torch.is_tensor(t))


def transient_peak_bytes(step) -> int:
    """Peak bytes allocated by the torch CPU allocator during ``step()`` beyond the bytes held at its start."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    peak = cur = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def make_variants(params, device, names, lr=1e-4, wd=0.0):
    """name -> object with .step(), all on the shared ``params`` (their .grad set once)."""
    kw = dict(lr=lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=wd)
    makers = {
        "sage_fused": lambda: AdamSAGE(params, impl="fused", **kw),
        "sage_fused_lists": lambda: _list_path(AdamSAGE(params, impl="fused", **kw)),
        "sage_single_tensor": lambda: AdamSAGE(params, impl="single_tensor", **kw),
        "sage_foreach": lambda: AdamSAGE(params, impl="foreach", **kw),
        "adamax_sage_fused": lambda: AdamaxSAGE(params, impl="fused", **kw),
        "adamw_foreach": lambda: torch.optim.AdamW(params, foreach=True, **kw),
        "adamw_fused": lambda: torch.optim.AdamW(params, fused=True, **kw),
        "fairseq_adam": lambda: _fairseq_adam(params, **kw),
        "authors_loop": lambda: AuthorsStyleSAGE(params, **kw),
        "sage_compiled_flat": lambda: FlatCompiledSAGE(sum(p.numel() for p in params), device, **kw),
    }
    return {n: makers[n]() for n in names}


def _list_path(opt):
    """The optimizer with the step of the code before launch plans (lists of tensors at every step), to compare."""
    opt._launch_plans = False
    return opt


def _fairseq_adam(params, **kw):
    from fairseq.optim.adam import Adam  # the torch.optim.Optimizer inside fairseq's FairseqAdam

    return Adam(params, **kw)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(model, names, rounds, warmup, device, seed=0, log=print):
    """Time and measure every variant of ``names`` on ``model``'s shapes (see the module docstring); log the table
    and the targets, return them."""
    shapes = MODELS[model]
    params = random_parameters(shapes, seed, device)
    numel = sum(p.numel() for p in params)
    largest = max(p.numel() * p.element_size() for p in params)
    log(f"\n== {MODEL_NAMES[model]}: {len(params)} tensors, {numel / 1e6:.1f}M parameters, fp32, {device} ==")
    variants = make_variants(params, device, names)
    first_step_s = warm_up(variants, warmup, device)
    times = interleaved_times(variants, rounds, seed, device)
    memory = transient_memory(variants, device)
    results = figures(variants, times, memory, first_step_s)
    log_table(results, log)
    summary = targets(results, largest / 2**20, log)
    del variants, params
    return dict(
        model=MODEL_NAMES[model], tensors=len(shapes), numel=numel, largest_tensor_mb=largest / 2**20,
        rounds=rounds, results=results, targets=summary,
    )  # fmt: skip


def random_parameters(shapes, seed, device) -> list:
    """The model's parameters, each with a gradient, drawn from ``seed``: every variant steps these same tensors."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _, shape in shapes:
        p = (torch.randn(shape, generator=gen) * 0.02).to(device).requires_grad_()
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device)
        params.append(p)
    return params


def warm_up(variants, warmup, device) -> dict:
    """``warmup`` steps of each variant (the first builds the state; compiled variants compile in it); returns the
    first step's seconds per variant."""
    first_step_s = {}
    print("  warm-up", file=sys.stderr, flush=True)
    for name, opt in variants.items():
        t0 = time.perf_counter()
        opt.step()
        _sync(device)
        first_step_s[name] = time.perf_counter() - t0
        for _ in range(warmup - 1):
            opt.step()
    _sync(device)
    return first_step_s


def interleaved_times(variants, rounds, seed, device) -> dict[str, list[float]]:
    """Seconds per step of each variant: every round times one step of each, in a fresh random order."""
    times = {n: [] for n in variants}
    rng = random.Random(seed)
    order = list(variants)
    for i in range(rounds):
        if i % 5 == 0:
            print(f"  round {i}/{rounds}", file=sys.stderr, flush=True)
        rng.shuffle(order)
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            variants[name].step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def transient_memory(variants, device) -> dict[str, int]:
    """The bytes one step of each variant allocates beyond what was held before it, at the peak."""
    memory = {}
    print("  memory", file=sys.stderr, flush=True)
    for name, opt in variants.items():
        if device.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            opt.step()
            torch.cuda.synchronize()
            memory[name] = torch.cuda.max_memory_allocated() - base
        else:
            memory[name] = transient_peak_bytes(opt.step)
    return memory


def figures(variants, times, memory, first_step_s) -> dict[str, dict]:
    """Per variant: the median step and its range in ms, the ratios to fused AdamW, state and transient MB."""
    results = {}
    ref = statistics.median(times["adamw_fused"]) if "adamw_fused" in times else None
    for name in variants:
        ms = 1e3 * statistics.median(times[name])
        results[name] = dict(
            ms=ms,
            ratio_to_adamw_fused=(ms / (1e3 * ref)) if ref else None,
            ms_min=1e3 * min(times[name]),
            ms_max=1e3 * max(times[name]),
            state_mb=state_bytes(variants[name]) / 2**20,
            transient_mb=memory[name] / 2**20,
            first_step_s=first_step_s[name],
            # the median over the rounds of this variant's time over fused AdamW's in the same round: on a machine
            # whose speed drifts (shared cores), a paired ratio moves less than the ratio of the medians
            paired_ratio_to_adamw_fused=statistics.median(
                a / b for a, b in zip(times[name], times["adamw_fused"], strict=True)
            )
            if "adamw_fused" in times
            else None,
        )
    return results


def log_table(results, log) -> None:
    """The figures as a table, fastest first."""
    log(
        f"{'variant':20s} {'ms/step':>9s} {'(min-max)':>17s} {'x fused AdamW':>14s} {'paired':>7s} {'state MB':>9s} "
        f"{'transient MB':>13s}"
    )
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["ms"]):
        ratio = f"{r['ratio_to_adamw_fused']:.2f}" if r["ratio_to_adamw_fused"] else "-"
        paired = f"{r['paired_ratio_to_adamw_fused']:.3f}" if r["paired_ratio_to_adamw_fused"] else "-"
        span = f"({r['ms_min']:.0f}-{r['ms_max']:.0f})"
        log(f"{name:20s} {r['ms']:9.1f} {span:>17s} {ratio:>14s} {paired:>7s} {r['state_mb']:9.1f} "
            f"{r['transient_mb']:13.1f}")  # fmt: skip
    if "sage_compiled_flat" in results:
        log(f"sage_compiled_flat first step (compile included): {results['sage_compiled_flat']['first_step_s']:.1f} s")


def bench_models(info: dict, models, names, rounds, warmup, device) -> dict:
    """The machine line, then :func:`bench_model` for each model: what the benchmarks' JSON holds."""
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    out = dict(machine=info, command=" ".join(["python", *sys.argv]), models=[])
    for model in models:
        out["models"].append(bench_model(model, names, rounds, warmup, device))
    return out


def targets(results, largest_mb, log):
    """The issue's targets for the fused SAGE step, from the figures of this run."""
    out = {}
    r = results
    if not {"sage_fused", "adamw_fused"} <= r.keys():
        return out
    sage = r["sage_fused"]
    checks = [("SAGE step / fused AdamW step", sage["ms"] / r["adamw_fused"]["ms"], "<= 1.3", lambda x: x <= 1.3)]
    if "sage_fused_lists" in r and sage.get("paired_ratio_to_adamw_fused"):
        ratio = sage["paired_ratio_to_adamw_fused"] / r["sage_fused_lists"]["paired_ratio_to_adamw_fused"]
        checks.append(("SAGE step (launch plan) / list path's step (paired ratios)", ratio, "<= 1.05",
                       lambda x: x <= 1.05))  # fmt: skip
    if "fairseq_adam" in r:
        checks.append(("fairseq adam step / SAGE step", r["fairseq_adam"]["ms"] / sage["ms"], "> 1", lambda x: x > 1))
    if "authors_loop" in r:
        checks.append(
            ("authors' loop step / SAGE step", r["authors_loop"]["ms"] / sage["ms"], ">= 5", lambda x: x >= 5)
        )
    for adam in ("adamw_fused", "adamw_foreach"):
        if adam in r:
            ratio = sage["state_mb"] / r[adam]["state_mb"]
            checks.append(("SAGE state / AdamW state", ratio, "<= 1.5", lambda x: x <= 1.5))
            break
    extra = sage["transient_mb"] - r["adamw_fused"]["transient_mb"]
    checks.append(
        (f"SAGE transient - fused AdamW transient, MB (largest tensor {largest_mb:.1f} MB)", extra,
         f"<= {largest_mb:.1f}", lambda x: x <= largest_mb)
    )  # fmt: skip
    log("targets:")
    for name, value, bound, ok in checks:
        out[name] = dict(value=value, target=bound, met=bool(ok(value)))
        log(f"  {name:70s} {value:8.2f}  target {bound:8s} {'met' if ok(value) else 'MISSED'}")
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(
        cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
        python=platform.python_version(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )  # fmt: skip


DEFAULT_VARIANTS = [
    "sage_fused",
    "sage_single_tensor",
    "sage_foreach",
    "adamax_sage_fused",
    "adamw_foreach",
    "adamw_fused",
    "fairseq_adam",
    "authors_loop",
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["wmt", "iwslt"], choices=sorted(MODELS))
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--compile", action="store_true", help="add sage_compiled_flat (torch.compile, inductor)")
    ap.add_argument("--rounds", type=int, default=30, help="timed steps per variant (interleaved)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, one per core)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants + (["sage_compiled_flat"] if args.compile else [])
    out = bench_models(machine(), args.models, names, args.rounds, args.warmup, torch.device("cpu"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out
