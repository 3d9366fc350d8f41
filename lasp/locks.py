"""One writer per run directory and per mask set.

A lock is a file ``<dir>/.lasp.lock`` holding the writer's pid, host, start
time and command. It is created atomically (written under a temporary name,
then hard-linked into place, which fails if a lock is already there), so two
writers started at the same instant cannot both win.

A second writer finds the file and stops with an error naming the directory
and the holder. A lock whose process is gone (same host, pid not running) is
stale: it is reported and taken over. A lock from another host cannot be
checked from here; the message says how to remove it once that job is gone.

Locks are re-entrant within one process (a stage takes the run lock, the
training loop takes it again) and are released at process exit; a killed
process leaves a stale lock, which the next run takes over.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from lasp.errors import LaspError

LOCK_NAME = ".lasp.lock"
_held: dict[str, int] = {}  # lock path -> re-entry count (this process)
_made: set[str] = set()  # lock paths whose directory this process created only to hold the lock
_guard = threading.Lock()


class LockError(LaspError):
    """Another process is writing to the same run directory or mask set."""


def _host() -> str:
    return socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / LOCK_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treated like a lock without a known holder


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _try_create(path: Path, record: dict) -> bool:
    tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    try:
        os.link(tmp, path)  # atomic: fails when a lock file exists
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def acquire(directory: str | os.PathLike, what: str = "directory") -> Path:
    """Take the lock of ``directory`` (created if needed) for this process; returns the lock file's path.

    Raises :class:`LockError` when a live process holds it.
    """
    directory = Path(directory)
    existed = directory.is_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    key = str(path.resolve())
    with _guard:
        if key in _held:
            _held[key] += 1
            return path
        record = {"pid": os.getpid(), "host": _host(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)[:500]}
        for _ in range(20):
            if _try_create(path, record):
                _held[key] = 1
                if not existed:
                    _made.add(key)
                return path
            holder = read_lock(directory)
            if holder is None:  # released between our attempt and the read
                continue
            if not holder:
                # a lock file without content: its writer died between create and write (or is writing now)
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < 5:
                    time.sleep(0.2)
                    continue
            elif holder.get("host") != _host():
                raise LockError(f"{what} {directory} is locked by {_describe(holder)}; if that job has ended, "
                                f"delete {path}")
            elif holder.get("pid") == os.getpid():  # our own lock left by a forgotten release
                _held[key] = 1
                return path
            elif _alive(int(holder.get("pid", -1))):
                raise LockError(f"{what} {directory} is in use by another lasp process ({_describe(holder)}); "
                                f"wait for it to finish or use another directory")
            # stale: move it aside under a unique name (only one taker succeeds), then retry the create
            aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            aside.unlink(missing_ok=True)
            print(f"lasp: {what} {directory}: took over a stale lock "
                  f"({_describe(holder) if holder else 'no holder recorded'}; that process is not running)",
                  file=sys.stderr)
        raise LockError(f"{what} {directory}: could not take the lock {path}")


def release(directory: str | os.PathLike) -> None:
    """Undo one :func:`acquire`; the file goes when the last holder in this process releases it."""
    path = Path(directory) / LOCK_NAME
    key = str(path.resolve())
    with _guard:
        if key not in _held:
            return
        _held[key] -= 1
        if _held[key] > 0:
            return
        del _held[key]
        _remove_if_ours(path)
        if key in _made:
            # a command that failed before writing anything leaves no empty folder behind it
            _made.discard(key)
            try:
                path.parent.rmdir()
            except OSError:
                pass  # it holds what the command wrote (or someone else's files): kept


def _remove_if_ours(path: Path) -> None:
    holder = read_lock(path.parent)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == _host():
        path.unlink(missing_ok=True)


class locked:
    """``with locked(dir, "mask set"):`` — acquire for the block, release after."""

    def __init__(self, directory: str | os.PathLike, what: str = "directory"):
        self.directory, self.what = directory, what

    def __enter__(self) -> Path:
        return acquire(self.directory, self.what)

    def __exit__(self, *exc) -> None:
        release(self.directory)


class released_after:
    """``with released_after():`` — locks the block took and still holds are released when it ends, so a command
    run in-process (``lasp.cli.main`` from a notebook or a test) holds nothing once it returns."""

    def __enter__(self):
        self._before = set(_held)
        return self

    def __exit__(self, *exc) -> None:
        for key in [k for k in _held if k not in self._before]:
            _release_fully(key)


def _release_fully(key: str) -> None:
    """Drop every re-entry of the lock at ``key`` (a lock file path) at once."""
    _held[key] = 1
    release(Path(key).parent)


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        _release_fully(key)
