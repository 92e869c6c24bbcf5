"""The per-token loss of trained checkpoints by training-frequency band (``scripts/analyze_token_loss.py``):
:mod:`.analysis` measures and tables, :mod:`.command` is the command line."""
