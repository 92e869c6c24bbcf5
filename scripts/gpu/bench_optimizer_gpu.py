#!/usr/bin/env python
"""The optimizer-step benchmark on a CUDA GPU; writes its results (with the device name) as JSON.

The command line and what it measures: sage_toolkit.bench.optimizer_gpu (``--help``).
"""

from sage_toolkit.bench.optimizer_gpu import main

if __name__ == "__main__":
    main()
