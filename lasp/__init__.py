"""lasp: language-adaptive sparse sub-networks for cross-lingual speech models.

The top-level names are imported on first use, so that ``lasp --help`` and data worker processes do not pay for
torch and transformers until they need them; type checkers read them from the imports below.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from lasp.masked.confine import ConfinedOptimizer
    from lasp.masked.model import MaskedModel
    from lasp.masks.language_masks import LanguageMasks
    from lasp.models.load import load_model, preset_config
    from lasp.models.system import System, build_system
    from lasp.search.methods import search_masks
    from lasp.search.pruning import make_language_masks, prune
    from lasp.search.scoring import score_language
    from lasp.train.add_language import add_language, remove_language

_EXPORTS = {
    "ConfinedOptimizer": "lasp.masked.confine",
    "LanguageMasks": "lasp.masks.language_masks",
    "MaskedModel": "lasp.masked.model",
    "System": "lasp.models.system",
    "build_system": "lasp.models.system",
    "load_model": "lasp.models.load",
    "preset_config": "lasp.models.load",
    "make_language_masks": "lasp.search.pruning",
    "prune": "lasp.search.pruning",
    "score_language": "lasp.search.scoring",
    "search_masks": "lasp.search.methods",
    "add_language": "lasp.train.add_language",
    "remove_language": "lasp.train.add_language",
}

__all__ = ["ConfinedOptimizer", "LanguageMasks", "MaskedModel", "System", "build_system", "load_model",
           "preset_config", "make_language_masks", "prune", "score_language", "search_masks", "add_language", "remove_language",
           "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lasp' has no attribute {name!r}")
