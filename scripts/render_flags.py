#!/usr/bin/env python3
"""Print a Hydra config of configs/ as a plain fairseq-train command line (sage_toolkit.hydra_flags)."""

from sage_toolkit.hydra_flags import main

if __name__ == "__main__":
    raise SystemExit(main())
