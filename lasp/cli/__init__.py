"""The `lasp` command: a thin layer over importable functions.

:data:`lasp.cli.commands.COMMANDS` lists the commands in the order of the work and the module of this package
that parses each; only the module of the command being run is imported (it imports the library it calls). A
module's ``register(subparsers, name, help)`` adds that command's parser with a handler that receives the
parsed arguments and calls library functions.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shlex
import signal
import sys
import threading

from lasp import __version__
from lasp.cli.commands import COMMANDS, RENAMED
from lasp.cli.failures import describe_os_error, describe_unicode
from lasp.errors import LaspError
from lasp.locks import released_after

# `lasp bench` alone (and with options only) times training steps, as it always did
_BENCH_ACTIONS = ("steps", "data", "-h", "--help")


def current_spelling(argv: list[str]) -> list[str]:
    """``argv`` with an earlier spelling of a command replaced by today's (a one-line note says so)."""
    for old, new in RENAMED.items():
        if tuple(argv[:len(old)]) == old:
            print(f"lasp: note: `lasp {' '.join(old)}` is now `lasp {' '.join(new)}`", file=sys.stderr)
            return [*new, *argv[len(old):]]
    if argv[:1] == ["bench"] and (len(argv) == 1 or argv[1] not in _BENCH_ACTIONS):
        return ["bench", "steps", *argv[1:]]
    return argv


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with ``command``'s own arguments when given (every other command is listed by name)."""
    parser = argparse.ArgumentParser(
        prog="lasp",
        description="Language-adaptive sparse sub-networks for cross-lingual speech models.",
    )
    parser.add_argument("--version", action="version", version=f"lasp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(f"lasp.cli.{module}").register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _quiet_bars_when_logged() -> None:
    """No tqdm control characters in a log: transformers' bars are off when stderr is not a terminal."""
    if not sys.stderr.isatty() and "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _command_line(argv: list[str]) -> str:
    return shlex.join(["lasp", *argv])


def _stdout_gone() -> None:
    # the reader (`| head`) left: point stdout at /dev/null so the flush at exit cannot fail again
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a training loop (which saves first, :mod:`lasp.train.stops`): unwind like Ctrl-C, so that
    what is half-written is cleaned up and the exit status is 143."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def _sigterm_interrupts():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pid = os.getpid()

    def raise_terminated(signum, frame) -> None:
        if os.getpid() != pid:  # a forked worker inherited this handler: it ends as SIGTERM ends a process
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    argv = current_spelling(given)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    name = " ".join(v for k, v in vars(args).items()
                    if (k == "command" or k.endswith("_command")) and isinstance(v, str))
    debug = bool(os.environ.get("LASP_DEBUG"))
    try:
        _quiet_bars_when_logged()
        with released_after(), _sigterm_interrupts():
            result = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
    except LaspError as err:
        print(f"lasp {name}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        if debug:
            raise
        again = "resume with" if getattr(args, "resumable", False) else "run it again with"
        signum = getattr(err, "signum", signal.SIGINT)
        detail = str(err).strip()  # training says at which step it stopped and where it saved
        stopped = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
        command = _command_line(given)
        line = f"{detail} ({again}: {command})" if detail else f"{stopped}; {again}: {command}"
        print(f"lasp {name}: {line}", file=sys.stderr)
        return 128 + signum
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
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
