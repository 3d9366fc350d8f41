"""lasp: language-adaptive sparse sub-networks for cross-lingual speech models.

The top-level names are imported lazily, so that ``lasp --help`` and worker
processes do not pay for torch and transformers until they need them.
"""
__version__ = "0.1.0"

_EXPORTS = {
    "ConfinedOptimizer": "lasp.masked.confine",
    "LanguageMasks": "lasp.masks.language_masks",
    "MaskedModel": "lasp.masked.model",
    "load_model": "lasp.models.load",
    "preset_config": "lasp.models.load",
    "make_language_masks": "lasp.search.pruning",
    "prune": "lasp.search.pruning",
    "score_language": "lasp.search.scoring",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lasp' has no attribute {name!r}")
