"""Exceptions lasp raises for problems in what a user handed it.

The CLI prints these as one clear line instead of a traceback; every message
names the file, row, language or parameter at fault.
"""


class LaspError(Exception):
    """Base class: a user-facing error with a self-explanatory message."""


class MaskError(LaspError):
    """A mask set is malformed, corrupt, or does not fit the model."""


class ConfigError(LaspError):
    """A recipe or command-line option is invalid."""


class DataError(LaspError):
    """A manifest row, audio file or transcript cannot be used."""


class StorageError(LaspError):
    """Writing a file failed for a reason the user can fix: a full disk, a read-only file system, permissions."""
