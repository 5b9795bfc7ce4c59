"""COPY text format lines from Python values (the sink's staging path).

psycopg's ``write_row`` formats each value through its adaptation layer; the values here are
str, int, float, bool and None (the event's primitive types), so a formatter compiled per column
list, with no per-value type dispatch, is several times faster. Format: PostgreSQL's COPY text,
tab-separated, ``\\N`` for NULL, backslash escapes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_INF = math.inf

Formatter = Callable[[str, Iterable[dict[str, Any]]], str]


def _float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def field(value: Any) -> str:
    """One value in COPY text form, whatever its Python type (the generic path)."""
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


#: per Avro type, the COPY text of v{i} as a Python expression (None is handled around it)
_EXPRESSIONS = {
    "string": "v{i}.translate(_E)",
    "long": "str(v{i})",
    "int": "str(v{i})",
    "double": "(repr(v{i}) if -_INF < v{i} < _INF else _float(v{i}))",
    "float": "(repr(v{i}) if -_INF < v{i} < _INF else _float(v{i}))",
    "boolean": "('t' if v{i} else 'f')",
}


def formatter(fields: list[str], types: list[str]) -> Formatter:
    """``lines(site_id, rows)`` compiled for one column list: the site id, then ``fields``."""
    body = ["def lines(site_id, rows):",
            "    site = site_id.translate(_E)",
            "    out = []",
            "    append = out.append",
            "    for row in rows:"]
    parts = ["site"]
    for i, (name, kind) in enumerate(zip(fields, types)):
        body.append(f"        v{i} = row[{name!r}]")
        expr = _EXPRESSIONS.get(kind, "_field(v{i})").format(i=i)
        parts.append(f"(_NULL if v{i} is None else {expr})")
    body.append("        append(_TAB.join((" + ", ".join(parts) + ",)))")
    body.append("    out.append('')")
    body.append("    return _NL.join(out)")
    scope: dict[str, Any] = {"_E": _ESCAPES, "_INF": _INF, "_float": _float, "_field": field,
                             "_NULL": "\\N", "_TAB": "\t", "_NL": "\n"}
    exec("\n".join(body), scope)  # noqa: S102 - generated from field names (repr) and types
    return scope["lines"]  # type: ignore[no-any-return]


def lines(site_id: str, rows: Iterable[dict[str, Any]], fields: list[str]) -> str:
    """COPY text of ``rows`` through the generic path (any value type ``field`` knows)."""
    return formatter(fields, ["other"] * len(fields))(site_id, rows)
