#!/usr/bin/env python
"""GPU check: SAGE training curves in fp16 / memory-efficient fp16 / AMP / bf16 against fp32.

    python scripts/gpu/check_precision.py --out runs/gpu_precision --updates 300

The command line and what it does: sage_toolkit.gpu.precision (``--help``).
"""

from sage_toolkit.gpu.precision import main

if __name__ == "__main__":
    main()
