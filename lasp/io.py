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
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from safetensors import SafetensorError

from lasp.errors import DataError, StorageError

TMP_PREFIX = ".tmp-"
_hash_cache: dict[tuple, str] = {}

# what to do, per errno: the user can act on these without reading code
HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose an output path on another disk",
    errno.EDQUOT: "the disk quota is used up: free some space or choose an output path on another disk",
    errno.EROFS: "read-only file system: choose a writable output path (output_dir, run_dir or --out)",
    errno.EACCES: "permission denied: choose a path you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a path you may write to, or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another output path or move the file",
    errno.EISDIR: "this is a folder where a file was expected: give a file path",
    errno.EEXIST: "this path already exists as a file: choose another output path or move the file",
    errno.ENOENT: "no such file or folder: check the path",
}
# compiled writers (safetensors, torch's zip writer) raise their own exception types for these, with the OS
# message in the text
_WRITER_TEXT = {
    errno.ENOSPC: ("No space left on device", "os error 28", "file write failed"),
    errno.EROFS: ("Read-only file system", "os error 30"),
    errno.EACCES: ("Permission denied", "os error 13"),
}


def storage_error(path: str | os.PathLike, err: BaseException) -> StorageError | None:
    """A one-line :class:`StorageError` naming ``path`` when ``err`` is a disk/permission failure, else None."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None:
        text = " ".join(str(err).split())
        code = next((c for c, needles in _WRITER_TEXT.items() if any(n in text for n in needles)), None)
    if code not in HINTS or code in (errno.ENOENT, errno.EEXIST):
        return None
    return StorageError(f"{os.fspath(path)}: {os.strerror(code)}; {HINTS[code]}")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk, read-only file system or permission error inside the block into one line naming
    ``path`` (what lasp was writing), whichever library raised it."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        mapped = storage_error(path, err)
        if mapped is None:
            raise
        raise mapped from err


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """The UTF-8 text of ``path``; bytes that are not UTF-8 are an error naming the line and byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        prefix = f"{what}: " if what else ""
        raise DataError(f"{prefix}{os.fspath(path)}: not UTF-8 text (line {line}, byte 0x{data[err.start]:02x}); "
                        "save the file as UTF-8 (e.g. iconv -t UTF-8)") from None


def read_json_object(path: str | os.PathLike, what: str, error: type[Exception] = DataError,
                     hint: str = "") -> dict:
    """The JSON object in ``path``. Anything else is one ``error`` line naming the file, what it should hold
    (``what``: "lasp mask config") and, when given, what the user can do (``hint``): a missing or unreadable file,
    bytes that are not JSON, or JSON that is not an object."""
    name, tail = os.fspath(path), f"; {hint}" if hint else ""
    try:
        value = json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise error(f"{name}: missing{tail}") from None
    except OSError as err:
        raise error(f"{name}: cannot read the {what} ({err.strerror or err}){tail}") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are no Unicode text
        detail = f"{err.msg}, line {err.lineno}" if isinstance(err, json.JSONDecodeError) else "not Unicode text"
        raise error(f"{name}: not a readable {what} (not valid JSON: {detail}){tail}") from None
    if not isinstance(value, dict):
        raise error(f"{name}: not a {what} (a JSON object), got a JSON {type(value).__name__}{tail}")
    return value


def read_json_if_present(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``, or ``{}`` when there is none (yet): for files a stage still running may not
    have written, or that lasp only reads to do better (a report, a cleanup list)."""
    try:
        value = json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


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
    with writing(path):
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
    with writing(path):
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


def ordinary_modes(directory: str | os.PathLike) -> None:
    """Give the files in ``directory`` the permissions an ordinary ``open()`` gives (``0o666`` less the umask):
    libraries that write through :func:`tempfile.mkstemp` (transformers' ``save_pretrained``) leave ``0o600``."""
    mode = 0o666 & ~_umask()
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, mode)


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
