#!/usr/bin/env python
"""The host side of one SAGE step, per extra tensor: the list path against the launch plan.

The command line and what it measures: sage_toolkit.bench.host_step (``--help``).
"""

from sage_toolkit.bench.host_step import main

if __name__ == "__main__":
    main()
