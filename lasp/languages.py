"""Language codes: they name mask files, run folders and exports, so they are plain file-name-safe codes."""
from __future__ import annotations

import re
from typing import Any

from lasp.errors import DataError

# Language codes name files and folders: letters, digits, '-' and '_' only (zh-CN, sv-SE, rm-sursilv, es_419).
LANG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def check_language_code(lang: Any, where: str = "") -> str:
    if not isinstance(lang, str) or not LANG_PATTERN.match(lang):
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}language code {lang!r} is not valid (letters, digits, '-', '_'; at most 32 "
                        "characters, no '.', '/' or spaces)")
    return lang
