"""fairseq-sage: SAGE optimizers and scheduler as a fairseq ``--user-dir`` plugin.

``fairseq-train --user-dir fairseq_plugins --optimizer adam_sage ...`` imports this package, which registers the
fairseq components. ``from fairseq_plugins.optim import AdamSAGE`` works without fairseq installed.
"""

import importlib.util

if importlib.util.find_spec("fairseq") is not None:
    from . import fairseq_optim  # noqa: F401  (registers adam_sage, adamax_sage)
