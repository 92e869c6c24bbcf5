#!/usr/bin/env python3
"""The per-token NLL of trained fairseq translation checkpoints, split by how often each token occurs in training.

    python scripts/analyze_token_loss.py --data-bin DIR --checkpoints NAME=PATH [NAME=PATH ...] --out DIR
        [--subsets valid [train ...]] [--edges 10 100 1000] [--max-sentences N] [--max-tokens 4096]
        [--multiplier-batches N] [--seed 1] [--cpu]

The command: sage_toolkit.token_loss.command (``--help`` tells what the analysis measures).
"""

from sage_toolkit.token_loss.command import main

if __name__ == "__main__":
    raise SystemExit(main())
