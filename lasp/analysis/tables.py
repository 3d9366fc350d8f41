"""Writing analysis tables: CSV, JSON, markdown, and fixed-width terminal tables.

Undefined ratios are NaN in memory; JSON has no NaN, so they are written as
``null`` (strict JSON any reader accepts) and as an empty cell in CSV.
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from lasp.io import atomic_write, atomic_write_json


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists, dict keys → str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(data: Any, path: str | os.PathLike) -> str:
    return os.fspath(atomic_write_json(path, _clean(data), allow_nan=False))


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return value


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, columns: Sequence[str] | None = None) -> str:
    """``rows`` (dicts) as CSV; the columns are ``columns`` or the keys of the rows in first-seen order."""
    path = os.fspath(path)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    return _write_rows(path, [list(columns), *([_cell(row.get(col)) for col in columns] for row in rows)])


def write_matrix_csv(matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | os.PathLike,
                     corner: str = "language") -> str:
    """A labelled square matrix: first row and first column hold the labels."""
    return _write_rows(path, [[corner, *labels], *([label, *[_cell(round(v, 6) if isinstance(v, float) else v)
                                                              for v in row]] for label, row in zip(labels, matrix))])


def _write_rows(path: str | os.PathLike, rows) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return os.fspath(atomic_write(path, text.getvalue()))


def fmt(value: Any, spec: str = ".3f") -> str:
    """One table cell: floats with ``spec``, ints with thousands separators, NaN/None as '–'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], markdown: bool = False) -> str:
    """A fixed-width terminal table, or a GitHub markdown table; numbers right-aligned."""
    raw_rows = [list(row) for row in rows]
    text_rows = [[c if isinstance(c, str) else fmt(c) for c in row] for row in raw_rows]
    # A column is right-aligned when it holds numbers (missing values aside).
    numeric = [bool(raw_rows) and all(not isinstance(r[i], str) or r[i] in ("", "–") for r in raw_rows)
               for i in range(len(header))]
    widths = [max([len(h)] + [len(r[i]) for r in text_rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        return ("| " + " | ".join(parts) + " |") if markdown else "  ".join(parts).rstrip()

    out = [line(list(header))]
    if markdown:
        out.append("| " + " | ".join(("-" * (w - 1) + ":") if num else "-" * w
                                     for w, num in zip(widths, numeric)) + " |")
    else:
        out.append("  ".join("-" * w for w in widths))
    out.extend(line(r) for r in text_rows)
    return "\n".join(out)


def human_count(n: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (with ``unit`` after the suffix); None -> '–'."""
    if n is None:
        return "–"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}".rstrip()
    return f"{n:.0f} {unit}".rstrip() if isinstance(n, (int, float)) else str(n)


def human_bytes(n: float | None) -> str:
    """Bytes in binary units ('3.30 MiB'); None -> '–'."""
    if n is None:
        return "–"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"
