#!/usr/bin/env python
"""GPU check: the full-size IWSLT'14 De-En configs, Adam and SAGE, for a short fixed budget; curves and projected cost.

    python -m data_prep.iwslt14                                  # -> data-bin/iwslt14.tokenized.de-en (downloads)
    python scripts/gpu/check_iwslt14.py --out runs/gpu_iwslt14 [--updates 3000] [--seeds 1]

The command line and what it does: sage_toolkit.gpu.iwslt14 (``--help``).
"""

from sage_toolkit.gpu.iwslt14 import main

if __name__ == "__main__":
    main()
