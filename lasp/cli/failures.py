"""One readable line for the failures a user can fix: file-system errors and text that is not UTF-8.

The CLI catches these (after :class:`lasp.errors.LaspError`) and prints what :func:`describe` returns
instead of a traceback. Library code may raise plain ``OSError`` / ``UnicodeDecodeError`` from deep inside
torch, transformers or the standard library; the path is taken from the exception, or else from the open
file the failing frame was reading or writing, so no call site has to wrap its I/O.
``LASP_DEBUG=1`` makes the CLI re-raise them with the full traceback.
"""
from __future__ import annotations

import errno
import io
import os

# what to do, per errno: the user can act on these without reading code
_HINTS = {
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


def _open_file_in(tb, *, by_name: bool = False) -> str | None:
    """The innermost file a frame of traceback ``tb`` was reading or writing (None if none).

    An open file object names it; with ``by_name``, so does a local called ``filename``, ``path`` or ``f``
    holding a path (safetensors' ``save_file(tensors, filename)``, ``torch.save(obj, f)``).
    """
    names = []
    while tb is not None:
        for key, value in tb.tb_frame.f_locals.items():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                names.append(value.name)
            elif by_name and key in ("filename", "path", "f") and isinstance(value, (str, os.PathLike)):
                names.append(os.fspath(value))
        tb = tb.tb_next
    return names[-1] if names else None


# errors from compiled writers (safetensors, torch) that are file-system errors underneath, by their text
_IO_TEXT = {
    errno.ENOSPC: ("No space left on device", "os error 28", "file write failed"),
    errno.EROFS: ("Read-only file system", "os error 30"),
    errno.EACCES: ("Permission denied", "os error 13"),
}


def describe_io_text(err: BaseException) -> str | None:
    """One line for a non-OSError whose message shows a full, read-only or forbidden disk; None otherwise."""
    text = " ".join(str(err).split())
    for code, needles in _IO_TEXT.items():
        if any(n in text for n in needles):
            path = _open_file_in(err.__traceback__, by_name=True)
            return f"{path + ': ' if path else ''}{os.strerror(code)}; {_HINTS[code]}"
    return None


def _first_bad_byte(path: str) -> str:
    """'line L, byte 0xNN' of the first byte of ``path`` that is not UTF-8 ('' when unreadable)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return f"line {line}, byte 0x{data[err.start]:02x}"
    except OSError:
        return ""
    return ""


def describe_unicode(err: UnicodeDecodeError) -> str:
    path = _open_file_in(err.__traceback__)
    if path is None:
        return f"input is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
    where = _first_bad_byte(path)
    return f"{path}: not UTF-8 text{f' ({where})' if where else ''}; save the file as UTF-8 (e.g. iconv -t UTF-8)"


def describe_os_error(err: OSError) -> str:
    """``PATH: reason; what to do`` for ``err``."""
    path = err.filename if err.filename is not None else _open_file_in(err.__traceback__)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if err.errno is None:  # e.g. transformers' "no file named model.safetensors ... in directory X"
        text = " ".join(str(err).split())
        hint = ""
        if "no file named" in text:
            hint = ("; a model folder needs its weights (model.safetensors or pytorch_model.bin) next to "
                    "config.json: copy the whole Hugging Face folder (README, Models)")
        return f"{text}{hint}"
    reason = err.strerror or str(err)
    if err.filename2 is not None:
        path = f"{path} -> {os.fsdecode(err.filename2)}"
    hint = _HINTS.get(err.errno)
    head = f"{path}: {reason}" if path else reason
    return f"{head}; {hint}" if hint else head
