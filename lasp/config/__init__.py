"""Recipes: the typed schema of a lasp YAML recipe, loading, overrides and validation."""
