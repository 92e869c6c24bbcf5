"""The runner: training runs, their child processes and locks, and the comparison of configs over seeds.

What ``scripts/compare.py`` and the study (:mod:`sage_toolkit.study`) drive. (Not named ``runs``: that is the output
folder, which .gitignore ignores.)

- :mod:`.console`: progress and error lines of concurrent runs, one whole line at a time.
- locks on output and run folders (who holds them, stale ones taken over): :mod:`sage_toolkit.atomic`.
- :mod:`.process`: child processes in their own process groups, stopped together on a signal or a failure; a child's
  output streamed to its log; the runner session (signals -> exit 128 + n, errors -> one line).
- :mod:`.training`: one training run (:class:`~.training.Run`, configured by :class:`~.training.RunSettings`): the
  fairseq-hydra-train command, resumption, completion, its evaluation by ``scripts/evaluate.py``, its summary.
- :mod:`.comparison`: Hydra configs x seeds (:class:`~.comparison.CompareOptions`), the results table over seeds.
- :mod:`.report`: the comparison's Markdown table and the learning-curve plot.
"""
