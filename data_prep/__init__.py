"""Dataset preparation for fairseq-sage (see docs/data.md).

Entry points (each also a ``data_prep/prepare_*.sh`` wrapper): ``demo`` (the embedded Tatoeba corpus), ``multi30k``,
``iwslt14``, ``wmt16``; checks against the real data: ``check_iwslt14_bpe``, ``check_multi30k_tok``. Shared code:
``common`` (checked input, atomic output, downloads), ``text`` (Moses, BPE, sentencepiece), ``build`` (segment,
binarise with fairseq-preprocess, references), ``command`` (the options and the main every dataset command shares).
data_prep uses the toolkit (its error, ``sage_toolkit.atomic``'s output and locks, ``sage_toolkit.evaluation.facts``:
what evaluation needs, recorded in ``prep.json``); the toolkit never imports data_prep. Tiny inputs in each source's
file layout, for the tests: ``tests/data_fixtures.py``.
"""
