#!/usr/bin/env python
"""A tuned Adam-versus-SAGE study from one spec file: grid on validation, seeds, length penalty, test table, plots.

    python scripts/study.py studies/multi30k_de_en.yaml [--out runs/multi30k_de_en] [--jobs 2]

The command line and what it does: sage_toolkit.study.command (``--help``).
"""

from sage_toolkit.study.command import main

if __name__ == "__main__":
    main()
