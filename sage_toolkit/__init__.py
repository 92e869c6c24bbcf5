"""fairseq-sage's reproduction toolkit: evaluation, training runs, the Adam-versus-SAGE study, the redundancy analysis.

The library behind the thin commands in ``scripts/`` (and the console scripts of ``pyproject.toml``). It drives fairseq
through its command lines and reads what they write; it is never imported by ``fairseq_plugins`` (the ``--user-dir``
package stays light), and it never imports ``tests``.

Shared pieces, one job each: :mod:`.errors` (the user-facing error and the command wrapper), :mod:`.atomic` (files
written whole or not at all), :mod:`.fairseq_log` (fairseq's JSON log), :mod:`.stats` (means, spreads, differences),
:mod:`.paths` (where the project's configs and commands are).
"""
