"""The `lasp` command: a thin layer over importable functions.

Each module in :mod:`lasp.cli` contributes subcommands through
``register(subparsers)``; a subcommand's handler receives the parsed
arguments and calls library functions. Modules are discovered, so adding a
stage never means editing this file.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import shlex
import sys

from lasp import __version__
from lasp.errors import LaspError
from lasp.cli.failures import describe_io_text, describe_os_error, describe_unicode
from lasp.locks import released_after


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lasp",
        description="Language-adaptive sparse sub-networks for cross-lingual speech models.",
    )
    parser.add_argument("--version", action="version", version=f"lasp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in ("analysis", "bench", "data", "export", "masks", "run", "train"):
        importlib.import_module(f"lasp.cli.{name}").register(sub)
    return parser


def _quiet_bars_when_logged() -> None:
    """No tqdm control characters in a log: transformers' bars are off when stderr is not a terminal."""
    if not sys.stderr.isatty():
        import transformers

        transformers.utils.logging.disable_progress_bar()


def _command_line(argv: list[str] | None) -> str:
    return shlex.join(["lasp", *(sys.argv[1:] if argv is None else argv)])


def _stdout_gone() -> None:
    # the reader (`| head`) left: point stdout at /dev/null so the flush at exit cannot fail again
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    name = " ".join(v for k, v in vars(args).items()
                    if (k == "command" or k.endswith("_command")) and isinstance(v, str))
    debug = bool(os.environ.get("LASP_DEBUG"))
    try:
        _quiet_bars_when_logged()
        with released_after():
            result = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
    except LaspError as err:
        print(f"lasp {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        if debug:
            raise
        again = "resume with" if getattr(args, "resumable", False) else "run it again with"
        detail = str(err).strip()  # training may say at which step it stopped and where it saved
        command = _command_line(argv)
        line = f"{detail} ({again}: {command})" if detail else f"interrupted; {again}: {command}"
        print(f"lasp {name}: {line}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # like other Unix tools when the reader of their output exits: stop quietly (128 + SIGPIPE)
        _stdout_gone()
        return 141
    except UnicodeDecodeError as err:
        if debug:
            raise
        print(f"lasp {name}: error: {describe_unicode(err)}", file=sys.stderr)
        return 1
    except OSError as err:
        if debug:
            raise
        print(f"lasp {name}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a disk error that a compiled writer reports as its own exception type
        line = None if debug else describe_io_text(err)
        if line is None:
            raise  # a bug, not the user's input: keep the traceback
        print(f"lasp {name}: error: {line}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
