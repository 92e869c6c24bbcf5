"""The CPU benchmarks behind ``scripts/bench/`` (BENCHMARKS.md): one optimizer step against torch's and fairseq's Adam
(:mod:`.optimizer`; :mod:`.optimizer_gpu` runs it on CUDA), and the cost of the multiplier statistics
(:mod:`.sage_stats`). They print measured medians and ratios of interleaved variants; no test times anything."""
