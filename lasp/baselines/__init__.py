"""Baseline systems trained by the same runner as lasp (see lasp.train.systems)."""
from lasp.baselines.adapters import ADAPTERS_FILE, LanguageAdapters

__all__ = ["ADAPTERS_FILE", "LanguageAdapters"]
