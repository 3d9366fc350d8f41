"""Masked execution: the shared model run through one language's sub-network, and updates confined to it."""
