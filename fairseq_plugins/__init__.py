"""fairseq-sage: SAGE optimizers and scheduler as a fairseq ``--user-dir`` plugin.

``fairseq-train --user-dir fairseq_plugins --optimizer adam_sage ...`` imports this package, which registers the
fairseq components. ``from fairseq_plugins.optim import AdamSAGE`` works without fairseq installed.
"""

import importlib.util

if importlib.util.find_spec("fairseq") is not None:
    # registers adam_sage, adamax_sage; then sage_inverse_sqrt, sage_linear, sage_cosine
    from . import fairseq_optim, lr_scheduler  # noqa: F401
