"""Cost of the SAGE multiplier statistics: optimizer steps with and without a statistics request, interleaved.

    python scripts/bench/bench_sage_stats.py           # transformer_iwslt_de_en's tensors (about 39M + embeddings)
    python scripts/bench/bench_sage_stats.py --rounds 30 --samples 8192

Prints the median step time of each kind, the extra time of a step that computes statistics, and that extra time
spread over --log-interval updates as a fraction of a plain optimizer step (the statistics run once per interval).
The parameter shapes are those of fairseq's transformer_iwslt_de_en with the IWSLT'14 vocabularies (8848/6632).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fairseq_plugins.optim import AdamSAGE


def iwslt_shapes(src_vocab: int = 8848, tgt_vocab: int = 6632, d: int = 512, ffn: int = 1024, layers: int = 6):
    shapes = [(src_vocab, d), (tgt_vocab, d)]
    attn = [(d, d), (d,)] * 4  # q, k, v, out projections
    norm = [(d,), (d,)]
    ff = [(ffn, d), (ffn,), (d, ffn), (d,)]
    for _ in range(layers):
        shapes += attn + norm + ff + norm  # encoder layer
        shapes += attn + norm + attn + norm + ff + norm  # decoder layer: self and cross attention
    return shapes


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="pairs of (plain step, step with statistics)")
    p.add_argument("--samples", type=int, default=8192, help="statistics sample size (--sage-stats-samples)")
    p.add_argument("--log-interval", type=int, default=100, help="updates per statistics step")
    p.add_argument("--impl", default="auto", help="optimizer kernel")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.05) for s in iwslt_shapes()]
    numel = sum(q.numel() for q in params)
    opt = AdamSAGE(params, lr=1e-4, impl=args.impl)
    for q in params:
        q.grad = torch.randn_like(q) * 1e-3

    def step(with_stats: bool) -> float:
        if with_stats:
            opt.request_sage_stats(num_samples=args.samples)
        t = time.perf_counter()
        opt.step()
        elapsed = time.perf_counter() - t
        assert (opt.pop_sage_stats() is not None) == with_stats
        return elapsed

    for _ in range(3):  # warm up: state allocation, the sampler's index draw
        step(False)
        step(True)
    plain, stats = [], []
    for i in range(args.rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_stats in order:
            (stats if with_stats else plain).append(step(with_stats))
    t_plain, t_stats = statistics.median(plain), statistics.median(stats)
    extra = t_stats - t_plain
    result = {
        "parameters": numel,
        "tensors": len(params),
        "threads": torch.get_num_threads(),
        "median_step_s": t_plain,
        "median_step_with_stats_s": t_stats,
        "extra_per_stats_step_s": extra,
        "stats_step_ratio": t_stats / t_plain,
        "amortized_overhead_of_optimizer_step": extra / args.log_interval / t_plain,
    }
    print(
        f"{numel / 1e6:.1f}M parameters in {len(params)} tensors, {torch.get_num_threads()} threads, "
        f"{args.rounds} interleaved pairs\n"
        f"  optimizer step:                 median {t_plain * 1e3:8.2f} ms\n"
        f"  step with statistics ({args.samples} samples): median {t_stats * 1e3:8.2f} ms "
        f"(ratio {t_stats / t_plain:.3f}, +{extra * 1e3:.2f} ms)\n"
        f"  spread over --log-interval {args.log_interval}: "
        f"{100 * result['amortized_overhead_of_optimizer_step']:.3f}% of an optimizer step"
    )
    return result
