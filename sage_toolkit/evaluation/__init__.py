"""Evaluation of translation checkpoints (``scripts/evaluate.py``, ``scripts/average_checkpoints.py``), one job per
module:

- :mod:`.dataset`: what a data-bin's ``prep.json`` and the options say about scoring it (:class:`~.dataset.Setup`);
- :mod:`.checkpoints`: which checkpoint, numbered checkpoints, averaging;
- :mod:`.generation`: the fairseq-generate command and its output;
- :mod:`.scoring`: tokenized BLEU (fairseq's scorer, compound split), sacreBLEU/chrF, detokenisation, subword markers;
- :mod:`.options`: :class:`~.options.EvalOptions`, the options of one evaluation;
- :mod:`.evaluate`: :func:`~.evaluate.evaluate` (options -> scores, the JSON result);
- :mod:`.commands`: the two command lines (``evaluate_main``, ``average_checkpoints_main``).
"""
