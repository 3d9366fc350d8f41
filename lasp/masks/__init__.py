"""The mask set: one binary mask per language over named parameters, its bits, targets, file format and records."""
