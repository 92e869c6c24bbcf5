#!/usr/bin/env python
"""Cost of the SAGE multiplier statistics: optimizer steps with and without a statistics request, interleaved.

The command line and what it measures: sage_toolkit.bench.sage_stats (``--help``).
"""

from sage_toolkit.bench.sage_stats import main

if __name__ == "__main__":
    main()
