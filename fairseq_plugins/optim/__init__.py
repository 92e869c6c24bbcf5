"""SAGE optimizers for plain PyTorch (no fairseq import): ``AdamSAGE``, ``AdamaxSAGE`` and their functional forms."""

from ._functional import adam_sage, adamax_sage
from .reference import ReferenceAdamaxSAGE, ReferenceAdamSAGE
from .sage import AdamaxSAGE, AdamSAGE
from .selection import PRESETS

__all__ = ["AdamSAGE", "AdamaxSAGE", "adam_sage", "adamax_sage", "ReferenceAdamSAGE", "ReferenceAdamaxSAGE", "PRESETS"]
