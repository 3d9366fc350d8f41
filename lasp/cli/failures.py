"""One readable line for the failures a user can fix that reach the CLI as plain Python exceptions.

lasp's own writes and reads raise :class:`lasp.errors.StorageError` / :class:`lasp.errors.DataError` naming the
file (:mod:`lasp.io`); what is left is an ``OSError`` from elsewhere (the standard library, transformers), which
names its file itself, and text that was not UTF-8. ``LASP_DEBUG=1`` makes the CLI re-raise them with the full
traceback.
"""
from __future__ import annotations

import os

from lasp.io import HINTS


def describe_unicode(err: UnicodeDecodeError) -> str:
    return f"input is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8 (e.g. iconv -t UTF-8)"


def describe_os_error(err: OSError) -> str:
    """``PATH: reason; what to do`` for ``err``."""
    path = os.fsdecode(err.filename) if err.filename is not None else None
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
    hint = HINTS.get(err.errno)
    head = f"{path}: {reason}" if path else reason
    return f"{head}; {hint}" if hint else head
