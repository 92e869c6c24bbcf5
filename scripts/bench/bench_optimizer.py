#!/usr/bin/env python
"""One optimizer step on transformer parameter shapes: SAGE's kernels against torch's and fairseq's Adam (time, memory).

The command line and what it measures: sage_toolkit.bench.optimizer (``--help``).
"""

from sage_toolkit.bench.optimizer import main

if __name__ == "__main__":
    main()
