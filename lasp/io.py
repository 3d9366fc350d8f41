"""The one atomic write: a file (or folder) appears complete under its name, or not at all.

Everything lasp writes that another process or a later run reads back (manifests, mask files and their config,
run records, results, checkpoints, a stage's ``final/``) goes through here: the bytes go to a temporary name in
the same folder, are flushed to disk, and are renamed over the target (a rename within one file system is
atomic). A process killed at any point leaves either the old file or the new one, plus at most a ``.tmp-*``
leftover that no reader mistakes for the real thing.

Temporary files get the permissions an ordinary ``open()`` would give (``0o666`` less the umask), not the
``0o600`` of :func:`tempfile.mkstemp`: a mask set or model written by lasp must be as readable as any other file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TMP_PREFIX = ".tmp-"
_hash_cache: dict[tuple, str] = {}


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed to ``path``.

    For writers that want a file name (``safetensors.torch.save_file``, ``Image.save``). On an exception the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data.encode(encoding) if isinstance(data, str) else data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """``obj`` as JSON (one trailing newline) written atomically."""
    return atomic_write(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    ``replace``: an existing ``path`` is removed just before the rename (the new folder is complete by then, so
    a crash between the two leaves the temporary folder, never a half-written ``path``). Without it an existing
    ``path`` is an error. On an exception the temporary folder is removed.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}."))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            if not replace:
                raise FileExistsError(f"{path} exists")
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (cached per path, size and modification time within a process)."""
    path = os.fspath(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _hash_cache:
        return _hash_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]
