"""Benchmarks: what a mask costs per training step, and how fast the input pipeline feeds a model."""
