"""The tuned Adam-versus-SAGE study of ``scripts/study.py``: grid on validation, seeds, length penalty, test.

- :mod:`.spec`: the study spec (YAML) as a typed :class:`~.spec.StudySpec`, checked, with its error messages.
- :mod:`.protocol`: :class:`~.protocol.Study`, the protocol over :class:`sage_toolkit.runner.training.Run`, and
  :func:`~.protocol.run_study`, which runs it and writes study.json, study.md and the plots.
- :mod:`.report`: study.md's tables, the plots, the finished study's checkpoints.
"""
