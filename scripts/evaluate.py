#!/usr/bin/env python3
"""Evaluate a fairseq translation checkpoint: fairseq-generate, tokenized BLEU (fairseq's scorer) and sacreBLEU/chrF.

    python scripts/evaluate.py --data-bin DIR --checkpoint PATH_OR_DIR [--average-last N] [--subset test]
        [--beam 5] [--lenpen 1.0] [--max-tokens 8000] [--batch-size N] [--cpu] [--out JSON]

The command: sage_toolkit.evaluation.commands (``--help`` tells what each step does).
"""

from sage_toolkit.evaluation.commands import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main())
