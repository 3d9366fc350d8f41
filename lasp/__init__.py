"""lasp: language-adaptive sparse sub-networks for cross-lingual speech models.

The top-level names are imported lazily, so that ``lasp --help`` and worker
processes do not pay for torch and transformers until they need them.
"""
__version__ = "0.1.0"

_EXPORTS = {
    "ConfinedOptimizer": "lasp.confine",
    "LanguageMasks": "lasp.masks",
    "MaskedModel": "lasp.masked",
    "load_model": "lasp.models",
    "preset_config": "lasp.models",
    "make_language_masks": "lasp.pruning",
    "prune": "lasp.pruning",
    "score_language": "lasp.scoring",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lasp' has no attribute {name!r}")
