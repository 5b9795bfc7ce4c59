"""COPY text format lines from Python values (the sink's staging path).

psycopg's ``write_row`` formats each value through its adaptation layer; the values here are only
str, int, float, bool and None (the event's primitive types), so a direct formatter is a few
times faster. Format: PostgreSQL's COPY text, tab-separated, ``\\N`` for NULL, backslash escapes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def field(value: Any) -> str:
    """One value in COPY text form."""
    kind = type(value)
    if kind is str:
        return value.translate(_ESCAPES)
    if value is None:
        return "\\N"
    if kind is int:
        return str(value)
    if kind is bool:
        return "t" if value else "f"
    if kind is float:
        return _float(value)
    raise TypeError(f"cannot write {kind.__name__} in COPY text")


def lines(site_id: str, rows: Iterable[dict[str, Any]], fields: list[str]) -> str:
    """COPY text of ``rows``: the site id first, then ``fields`` in order, one line a row."""
    site = site_id.translate(_ESCAPES)
    out = []
    append = out.append
    fmt = field
    for row in rows:
        append("\t".join([site] + [fmt(row[f]) for f in fields]))
    out.append("")
    return "\n".join(out)
