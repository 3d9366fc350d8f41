"""Mask search: importance scores per language, pruning them into masks, and every search method side by side."""
