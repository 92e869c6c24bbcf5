#!/usr/bin/env python
"""Adam versus SAGE: train a pair of Hydra configs over N seeds, evaluate, tabulate, plot.

    python scripts/compare.py --configs demo_adam demo_sage --seeds 1 2 3 --data data-bin/demo --out runs/demo

The command line and what it does: sage_toolkit.runner.commands (``--help``).
"""

from sage_toolkit.runner.commands import main

if __name__ == "__main__":
    main()
