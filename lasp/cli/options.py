"""Command-line options several commands share."""
from __future__ import annotations

import argparse


def add_existing_choice(p: argparse.ArgumentParser, *, append: str, force: str) -> None:
    """``--append`` / ``--force`` for a command whose output already exists (``args.existing``: refuse, append or
    replace). Without either flag the user's existing output is refused, never overwritten."""
    how = p.add_mutually_exclusive_group()
    how.add_argument("--append", dest="existing", action="store_const", const="append", default="refuse", help=append)
    how.add_argument("--force", dest="existing", action="store_const", const="replace", help=force)
