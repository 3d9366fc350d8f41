"""The `lasp` command: a thin layer over importable functions.

Each module in :mod:`lasp.commands` contributes subcommands through
``register(subparsers)``; a subcommand's handler receives the parsed
arguments and calls library functions. Modules are discovered, so adding a
stage never means editing this file.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from lasp import __version__
from lasp.errors import LaspError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lasp",
        description="Language-adaptive sparse sub-networks for cross-lingual speech models.",
    )
    parser.add_argument("--version", action="version", version=f"lasp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import lasp.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"lasp.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        result = args.handler(args)
    except LaspError as err:
        print(f"lasp {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # training already said where its checkpoint is (TrainingInterrupted)
        if not str(err):
            print(f"lasp {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
