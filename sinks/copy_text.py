"""COPY text format lines from Python values (the sink's staging path).

psycopg's ``write_row`` formats each value through its adaptation layer; the values here are
str, int, float, bool and None (the event's primitive types), so a formatter compiled per column
list, with no per-value type dispatch, is several times faster. Format: PostgreSQL's COPY text,
tab-separated, ``\\N`` for NULL, backslash escapes.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from cdc.core.types.floats import float_text
from cdc.core.types.kind import Kind
from cdc.core.types.mapping import COPY_SCOPE
from cdc.core.types.text import ESCAPES

Formatter = Callable[[str, Iterable[dict[str, Any]]], str]


def field(value: Any) -> str:
    """One value in COPY text form, whatever its Python type (the generic path)."""
    kind = type(value)
    if kind is str:
        return value.translate(ESCAPES)
    if value is None:
        return "\\N"
    if kind is int:
        return str(value)
    if kind is bool:
        return "t" if value else "f"
    if kind is float:
        return float_text(value)
    raise TypeError(f"cannot write {kind.__name__} in COPY text")


def formatter(fields: list[str], kinds: list[Kind | None]) -> Formatter:
    """``lines(site_id, rows)`` compiled for one column list: the site id, then ``fields``.
    Each kind's COPY form is its family's (:attr:`Kind.copy`); a column of no kind of ours
    goes through :func:`field`."""
    body = ["def lines(site_id, rows):",
            "    site = site_id.translate(_E)",
            "    out = []",
            "    append = out.append",
            "    for row in rows:"]
    parts = ["site"]
    for i, (name, kind) in enumerate(zip(fields, kinds)):
        body.append(f"        v{i} = row[{name!r}]")
        expr = (kind.copy if kind is not None else "_field(v{i})").format(i=i)
        parts.append(f"(_NULL if v{i} is None else {expr})")
    body.append("        append(_TAB.join((" + ", ".join(parts) + ",)))")
    body.append("    out.append('')")
    body.append("    return _NL.join(out)")
    scope: dict[str, Any] = {**COPY_SCOPE, "_E": ESCAPES, "_field": field, "_NULL": "\\N",
                             "_TAB": "\t", "_NL": "\n"}
    exec("\n".join(body), scope)  # noqa: S102 - generated from field names (repr) and kinds
    return scope["lines"]  # type: ignore[no-any-return]


def lines(site_id: str, rows: Iterable[dict[str, Any]], fields: list[str]) -> str:
    """COPY text of ``rows`` through the generic path (any value type ``field`` knows)."""
    return formatter(fields, [None] * len(fields))(site_id, rows)
