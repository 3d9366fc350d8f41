"""Models: local checkpoints and presets, trained systems, the adapter baseline, per-language exports."""
