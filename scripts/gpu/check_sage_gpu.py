#!/usr/bin/env python
"""The GPU check of SAGE's triton step: step times eager and captured against fused AdamW, parity, syncs, FSDP,
fairseq-train words/s; JSON + Markdown, rewritten after every part, and the ratio to fused AdamW as the last line.

    python scripts/gpu/check_sage_gpu.py --out runs/gpu_check --compile   # on a CUDA GPU after `make setup`
    python scripts/gpu/check_sage_gpu.py --out /tmp/gpu_smoke --smoke      # the same plumbing on the CPU (tests)

Writes OUT/gpu_check.json and OUT/gpu_check.md; the command line and what is measured: sage_toolkit.gpu.check.
"""

from sage_toolkit.gpu.check import main

if __name__ == "__main__":
    main()
