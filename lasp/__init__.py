"""lasp: language-adaptive sparse sub-networks for cross-lingual speech models."""
__version__ = "0.1.0"
