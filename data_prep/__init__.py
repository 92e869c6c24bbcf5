"""Dataset preparation for fairseq-sage (see README.md)."""
