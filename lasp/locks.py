"""One writer per run directory, output folder and mask set.

A lock is ``fcntl.flock`` on the file ``<dir>/.lasp.lock``: the kernel grants it to one open file at a time
and releases it when its holder closes it or dies, however it dies (``kill -9`` included). There is no stale
lock to detect or take over, and no window in which two processes can both think they hold it.

The file also holds a human-readable record of the holder (pid, host, start time, command) so that a second
writer can say who is in its way; the record is only read for that message, never to decide anything.

Locks are re-entrant within one process (a stage takes the run lock, the training loop takes it again) and are
released at process exit. A forked child (a DataLoader worker) does not keep its parent's locks: its copies of
the lock files are closed right after the fork, so a killed parent's locks go with the parent.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from lasp.errors import LaspError

LOCK_NAME = ".lasp.lock"
_held: dict[str, list[int]] = {}  # lock path -> [file descriptor, re-entry count] (this process)
_made: dict[str, list[Path]] = {}  # lock path -> the folders this process created to hold it, deepest first
_guard = threading.RLock()


class LockError(LaspError):
    """Another process is writing to the same run directory, output folder or mask set."""


def read_lock(directory: str | os.PathLike) -> dict | None:
    """The holder record in ``directory``'s lock file: None without a file, ``{}`` when it is unreadable."""
    path = Path(directory) / LOCK_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written right now, or not ours


def _describe(holder: dict | None) -> str:
    if not holder:
        return "its holder has not recorded itself yet"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


def _open_locked(path: Path) -> int | None:
    """A descriptor of ``path`` holding its flock, or None when another open file holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        # a holder that released the lock unlinks the file: a lock on the unlinked file guards nothing, so
        # take it only while the name still refers to the file locked
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def acquire(directory: str | os.PathLike, what: str = "directory") -> Path:
    """Take the lock of ``directory`` (created if needed) for this process; returns the lock file's path.

    Raises :class:`LockError` naming the holder when another process holds it.
    """
    directory = Path(directory)
    created = [d for d in (directory, *directory.absolute().parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    key = str(path.resolve())
    with _guard:
        if key in _held:
            _held[key][1] += 1
            return path
        fd = _open_locked(path)
        if fd is None:
            raise LockError(f"{what} {directory} is in use by another lasp process ({_describe(read_lock(directory))}); "
                            "wait for it to finish or use another directory")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8"), 0)
        _held[key] = [fd, 1]
        if created:
            _made[key] = created
        return path


def release(directory: str | os.PathLike) -> None:
    """Undo one :func:`acquire`; the lock (and its file) goes when the last holder in this process releases it."""
    path = Path(directory) / LOCK_NAME
    key = str(path.resolve())
    with _guard:
        if key not in _held:
            return
        _held[key][1] -= 1
        if _held[key][1] > 0:
            return
        fd, _ = _held.pop(key)
        # unlink while still holding the lock: a waiter that opened the old file sees it gone and retries
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)
        # a command that failed before writing anything leaves no empty folder behind it
        for folder in _made.pop(key, []):
            try:
                folder.rmdir()
            except OSError:
                break  # it holds what the command wrote (or someone else's files): kept


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
    with _guard:
        if key in _held:
            _held[key][1] = 1
    release(Path(key).parent)


def _forget_in_child() -> None:
    # the child of a fork shares the parent's open lock files: closing its copies leaves the locks with the
    # parent alone (an unlock here would release them for the parent too)
    for fd, _ in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()
    _made.clear()


os.register_at_fork(after_in_child=_forget_in_child)


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        _release_fully(key)
