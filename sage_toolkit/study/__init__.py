"""The tuned Adam-versus-SAGE study of ``sage-study``: grid on validation, seeds, length penalty, test, significance.

- :mod:`.spec`: the study spec (YAML) as a typed :class:`~.spec.StudySpec`, checked, with its error messages.
- :mod:`.protocol`: :class:`~.protocol.Study`, the protocol's steps top to bottom, and :func:`~.protocol.run_study`,
  which runs it and writes study.json, study.md and the plots.
- :mod:`.store`: where the runs and their evaluations and analyses are (run folders, the record of :mod:`.record`).
- :mod:`.analyses`: the significance tests and the merged per-run analyses.
- :mod:`.compute`: the job time and thread counts the runs recorded, and study.md's compute table.
- :mod:`.report`: study.md's tables and the finished study's checkpoints; :mod:`.plots`: its plots.
- :mod:`.command`: the command line (``--only``, ``--next``, ``--grid``, ``--budget``, ``--retest`` ...).
"""
