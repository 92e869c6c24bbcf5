"""The redundancy analysis of trained checkpoints (``scripts/analyze_redundancy.py``), one job per module:

- :mod:`.options`: :class:`~.options.RedundancyOptions`, the options of one analysis;
- :mod:`.model`: loading a checkpoint in-process, batches of its data-bin;
- :mod:`.pruning`: the scope, the global ranking, pruning and its measures (zeros, overlap);
- :mod:`.sensitivity`: ``|theta * grad|`` per entry and its quantiles per layer type;
- :mod:`.scoring`: the loss and the BLEU (sage_toolkit.evaluation's settings) of a pruned model;
- :mod:`.summary`: the mean ± std over a group's models, the table;
- :mod:`.plots`: the pruning curves and the sensitivity histograms;
- :mod:`.analysis`: :func:`~.analysis.run` (options -> every model analysed, ``redundancy.json``, the figures);
- :mod:`.command`: the command line (``main``).
"""
