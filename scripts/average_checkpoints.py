#!/usr/bin/env python3
"""Average the model parameters of several fairseq checkpoints (checkpoint averaging, as in fairseq's
``scripts/average_checkpoints.py``, which is not installed with the fairseq package).

    python scripts/average_checkpoints.py --inputs SAVE_DIR --num-epoch-checkpoints 5 --output avg.pt
    python scripts/average_checkpoints.py --inputs SAVE_DIR --num-update-checkpoints 5 --output avg.pt
    python scripts/average_checkpoints.py --inputs a.pt b.pt c.pt --output avg.pt

The command: sage_toolkit.evaluation.commands (``--help`` tells how checkpoints are chosen and averaged).
"""

from sage_toolkit.evaluation.commands import average_checkpoints_main

if __name__ == "__main__":
    raise SystemExit(average_checkpoints_main())
