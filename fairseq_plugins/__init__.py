"""fairseq-sage: SAGE optimizers and scheduler as a fairseq ``--user-dir`` plugin.

``fairseq-train --user-dir fairseq_plugins --optimizer adam_sage ...`` imports this package after fairseq; it then
registers the fairseq components (``adam_sage``, ``adamax_sage``; ``sage_inverse_sqrt``, ``sage_linear``,
``sage_cosine``). Imported without fairseq loaded (``from fairseq_plugins.optim import AdamSAGE``), it imports
nothing of fairseq, installed or not.

In a process that imported this package before fairseq and then uses fairseq in-process, call ``register()`` (fairseq
skips a ``--user-dir`` package that is already imported; the fairseq patched by ``scripts/patch_fairseq.py`` calls
``register()`` itself in that case).
"""

import sys

__all__ = ["register"]


def register() -> None:
    """Register the plugin's optimizers and lr schedulers with fairseq (imports fairseq). Idempotent."""
    try:
        import fairseq  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "fairseq":
            raise
        raise ModuleNotFoundError(
            "fairseq_plugins.register() needs fairseq, which is not installed in this Python; the optimizers alone "
            "(fairseq_plugins.optim) do not",
            name="fairseq",
        ) from exc
    # registers adam_sage, adamax_sage; then sage_inverse_sqrt, sage_linear, sage_cosine (once: modules are cached)
    from . import fairseq_optim, lr_scheduler  # noqa: F401


# The hook the patched fairseq calls when --user-dir names this package after it was imported without fairseq.
__fairseq_register__ = register

if sys.modules.get("fairseq") is not None:  # fairseq imports itself before a --user-dir package
    register()
