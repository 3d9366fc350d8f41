"""Flags several `lasp` commands share: ``--explain`` (every recipe key) and ``--append`` / ``--force`` (what to
do with outputs already in ``--out``)."""
from __future__ import annotations

import argparse

from lasp.config.explain import explain


def add_explain(p: argparse.ArgumentParser) -> None:
    """``--explain``: list every recipe key (all sections) with type, default and help, then exit."""
    p.add_argument("--explain", action="store_true",
                   help="list every recipe key of every section with its type, default and help, and exit")


def print_explain() -> int:
    print("\n".join(explain()))
    return 0


def add_existing_flags(p: argparse.ArgumentParser, append_help: str, force_help: str) -> None:
    """``--append`` / ``--force`` as ``args.existing``: "refuse" (neither; the default), "append" or "replace"."""
    how = p.add_mutually_exclusive_group()
    how.add_argument("--append", dest="existing", action="store_const", const="append", default="refuse",
                     help=append_help)
    how.add_argument("--force", dest="existing", action="store_const", const="replace", help=force_help)
