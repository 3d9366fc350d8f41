"""Subcommand modules of the `lasp` CLI; each defines ``register(subparsers)``.

Handlers stay thin: parse arguments, call a library function, print a summary.
"""
