"""Enum labels a site adds while it streams.

``ALTER TYPE ... ADD VALUE`` changes no table, so pgoutput sends no new Relation message, and
the event schema would keep the old label list: the cloud's enum would then refuse the new
label. The source therefore checks the values of enum columns (and enum arrays) against the
labels it knows; an unknown one makes it re-read the type from the catalog and publish a new
schema version, from which the sink adds the label. Only tables with such columns pay for it.

Pure: text in, labels out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from cdc.core.wire.model import TableInfo


@dataclass(frozen=True, slots=True)
class EnumCheck:
    """One column whose values must be labels of a known enum."""

    index: int
    labels: frozenset[bytes]
    is_array: bool


def enum_checks(info: TableInfo) -> tuple[EnumCheck, ...]:
    """The enum and enum-array columns of a table version, with the labels its schema holds."""
    checks = []
    for index, col in enumerate(info.columns):
        for d in col.defs:
            if d.variant != "enum":
                continue
            if col.sql_type in (d.sql_name, d.sql_name + "[]"):
                checks.append(EnumCheck(index, frozenset(x.encode() for x in d.labels),
                                        col.sql_type.endswith("[]")))
    return tuple(checks)


def array_elements(raw: bytes) -> Iterable[bytes]:
    """The non-NULL elements of an array's text form (any dimensions, quoted or not)."""
    text = raw
    if text[:1] == b"[":  # explicit bounds: [0:2]={...}
        text = text[text.index(b"=") + 1:]
    i, n = 0, len(text)
    while i < n:
        ch = text[i:i + 1]
        if ch in (b"{", b"}", b",", b" "):
            i += 1
        elif ch == b'"':
            out = bytearray()
            i += 1
            while text[i:i + 1] != b'"':
                if text[i:i + 1] == b"\\":
                    i += 1
                out += text[i:i + 1]
                i += 1
            i += 1
            yield bytes(out)
        else:
            start = i
            while i < n and text[i:i + 1] not in (b",", b"}"):
                i += 1
            element = text[start:i].strip()
            if element.upper() != b"NULL":
                yield element


def unknown_label(checks: tuple[EnumCheck, ...], values: tuple | None) -> bytes | None:
    """The first value (or array element) in ``values`` that is not a known label, if any."""
    if values is None:
        return None
    for check in checks:
        raw = values[check.index]
        if type(raw) is not bytes:
            continue  # NULL or unchanged TOAST
        if check.is_array:
            for element in array_elements(raw):
                if element not in check.labels:
                    return element
        elif raw not in check.labels:
            return raw
    return None
