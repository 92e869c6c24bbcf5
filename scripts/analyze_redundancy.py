#!/usr/bin/env python3
"""Redundancy analysis of trained fairseq translation checkpoints: prune by sensitivity or magnitude, measure the loss.

    python scripts/analyze_redundancy.py --data-bin DIR --checkpoints NAME=PATH [NAME=PATH ...] --out DIR
        [--subset valid] [--batches 8] [--sparsities 0 0.1 0.2 0.3 0.4 0.5 0.6] [--methods sensitivity magnitude]
        [--bleu/--no-bleu] [--beam 1] [--max-tokens 4096] [--cpu]

The command: sage_toolkit.redundancy.command (``--help`` tells what the analysis does).
"""

from sage_toolkit.redundancy.command import main

if __name__ == "__main__":
    raise SystemExit(main())
